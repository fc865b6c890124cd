#!/usr/bin/env bash
# TEST ONLY: never ship an image built on this base.
#
# Assembles a local stand-in for gcr.io/distroless/static-debian12:nonroot from this machine's
# Debian packages, for scripts/runtime-check.sh on machines that cannot pull images: the same
# packages distroless static takes (base-files' os-release, netbase, tzdata, the ca-certificates
# bundle), the same passwd/group (root, nobody, nonroot 65532), /tmp 1777, /home/nonroot, and the
# same image config (user 65532, workdir /home/nonroot, PATH and SSL_CERT_FILE). Each package's
# control stanza goes to /var/lib/dpkg/status.d/ as in distroless, which is where scanners read the
# packages of a distroless image. No shell, no package manager, no setuid file.
#
# It is not distroless: no reproducible Bazel build, no signature, no security updates beyond what
# this machine's apt lists hold when it runs. The image's name says so:
#
#   tests/runtime/test-only-base-image.sh    prints localhost/test-only-distroless-static-standin:<tag>
#
# The tag is a hash of the package versions and of this script: an unchanged base is not rebuilt.
set -euo pipefail
script=$(readlink -f "$0")
export CONTAINERS_CONF=${CONTAINERS_CONF:?set CONTAINERS_CONF (scripts/runtime-check.sh does)}

name=localhost/test-only-distroless-static-standin
packages=(base-files netbase tzdata ca-certificates)
versions=$(apt-cache policy "${packages[@]}" 2>/dev/null | awk '/^[^ ]/ {p = $1} /Candidate:/ {print p, $2}')
[ -n "$versions" ] && ! grep -q '(none)' <<< "$versions" \
  || { apt-get update -q > /dev/null; versions=$(apt-cache policy "${packages[@]}" | awk '/^[^ ]/ {p = $1} /Candidate:/ {print p, $2}'); }
tag=$( (echo "$versions"; cat "$script") | sha256sum | cut -c1-12)
if podman image exists "$name:$tag"; then
  echo "$name:$tag"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$work/debs" "$root"
# (_apt cannot write to a mktemp directory; the download is of signed packages by name.)
(cd "$work/debs" && apt-get download -q -o APT::Sandbox::User=root "${packages[@]}" > /dev/null)
mkdir -p "$root/var/lib/dpkg/status.d" "$work/base-files"
for deb in "$work"/debs/*.deb; do
  package=$(dpkg-deb -f "$deb" Package)
  # Of base-files, distroless takes only os-release (and the copyright, as for every package).
  if [ "$package" = base-files ]; then
    dpkg-deb -x "$deb" "$work/base-files"
    mkdir -p "$root/usr/lib" "$root/etc" "$root/usr/share/doc/base-files"
    cp "$work/base-files/usr/lib/os-release" "$root/usr/lib/"
    ln -s ../usr/lib/os-release "$root/etc/os-release"
    cp "$work/base-files/usr/share/doc/base-files/copyright" "$root/usr/share/doc/base-files/"
  else
    dpkg-deb -x "$deb" "$root"
  fi
  dpkg-deb -f "$deb" > "$root/var/lib/dpkg/status.d/$package"
done

# What distroless keeps of the others: the data and the copyright files; no scripts, no manuals.
# ca-certificates' data becomes one bundle (distroless' cacerts rule); update-ca-certificates, a
# shell script, goes.
mkdir -p "$root/etc/ssl/certs"
cat "$root"/usr/share/ca-certificates/mozilla/*.crt > "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root/usr/share/ca-certificates" "$root/usr/sbin" "$root/usr/share/lintian" "$root/etc/ca-certificates" \
  "$root/usr/share/man" "$root/usr/share/doc/ca-certificates/examples"
find "$root/usr/share/doc" -type f ! -name copyright -delete
find "$root/usr/share/doc" -type d -empty -delete
# os-release names the stand-in (scanners read ID and VERSION_ID; distroless says "Distroless").
sed -i 's/^PRETTY_NAME=.*/PRETTY_NAME="Distroless static stand-in, TEST ONLY (Debian GNU\/Linux 12)"/' \
  "$root/usr/lib/os-release"

cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
GROUP
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
mkdir -p "$root/tmp" "$root/root" "$root/home/nonroot"
chmod 1777 "$root/tmp"
chmod 700 "$root/root" "$root/home/nonroot"
chown 65532:65532 "$root/home/nonroot"

tar --numeric-owner --sort=name --mtime=@0 -C "$root" -cf "$work/rootfs.tar" .
podman import -q \
  --change 'USER 65532' --change 'WORKDIR /home/nonroot' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'LABEL org.opencontainers.image.description="TEST ONLY: a local stand-in for distroless static-debian12:nonroot (tests/runtime)"' \
  --message "TEST ONLY: distroless static stand-in from Debian packages: $(tr '\n' ' ' <<< "$versions")" \
  "$work/rootfs.tar" "$name:$tag" > /dev/null
echo "$name:$tag"
