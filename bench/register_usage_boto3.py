"""A minimal seller-style RegisterUsage check with boto3 (no token verification)."""

import os
import secrets

import boto3

client = boto3.client("meteringmarketplace")  # Region and endpoint from the environment
response = client.register_usage(
    ProductCode=os.environ["ENTITLEMENT_GATE_PRODUCT_CODE"],
    PublicKeyVersion=1,
    Nonce=secrets.token_urlsafe(32),
)
assert response["Signature"]
