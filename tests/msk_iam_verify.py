#!/usr/bin/env python3
"""Checks AWS MSK IAM tokens as an MSK broker would, with botocore's SigV4
(an implementation independent of the aws-sigv4 crate kollector signs with).

Usage: msk_iam_verify.py REGION KEYS_FILE
Reads one token per line on stdin and answers one JSON line per token:
  {"ok": true, "access_key": ..., "expires_ms": ...}
  {"ok": false, "why": ...}
KEYS_FILE is JSON, {access_key: {"secret": ..., "token": ... or null,
"expires": unix seconds or null}}, read again for every token (the test
rotates credentials while this runs).

A token is the base64url (no padding) of a presigned
GET https://kafka.<region>.amazonaws.com/?Action=kafka-cluster%3AConnect
with X-Amz-Expires, then an unsigned User-Agent parameter. It passes when:
the action, service, region and signed headers are MSK's; it has not
expired (X-Amz-Date + X-Amz-Expires), nor have the credentials that signed
it; the access key is known, its session token matches; a User-Agent is
present and is not signed; and botocore, signing the same request with the
same credentials at the same instant, computes the same signature.
"""
import base64
import datetime
import json
import sys
import time
import urllib.parse

import botocore.auth
import botocore.credentials
from botocore.awsrequest import AWSRequest


def check(token, region, keys_file):
    if "=" in token or "+" in token or "/" in token:
        return "not base64url without padding"
    try:
        url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except Exception as e:  # noqa: BLE001 - any decoding failure is a refusal
        return f"not base64url: {e}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or parts.path != "/":
        return f"not an https URL of /: {parts.scheme}://{parts.netloc}{parts.path}"
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    names = [k for k, _ in pairs]
    if len(set(names)) != len(names):
        return "a query parameter is repeated"
    q = dict(pairs)
    if q.get("Action") != "kafka-cluster:Connect":
        return f"action {q.get('Action')!r} is not kafka-cluster:Connect"
    if q.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return "not AWS4-HMAC-SHA256"
    scope = q.get("X-Amz-Credential", "").split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return "bad credential scope"
    access_key, day, scope_region, service = scope[:4]
    if service != "kafka-cluster":
        return f"service {service!r} is not kafka-cluster"
    if scope_region != region:
        return f"credential scope region {scope_region}, the cluster is in {region}"
    if parts.netloc != f"kafka.{scope_region}.amazonaws.com":
        return f"host {parts.netloc} is not kafka.{scope_region}.amazonaws.com"
    if q.get("X-Amz-SignedHeaders") != "host":
        return f"signed headers {q.get('X-Amz-SignedHeaders')!r}, not host"
    if not q.get("User-Agent"):
        return "no User-Agent parameter"
    # Unsigned: botocore below signs the request without it, so a token
    # whose signature covered it would not match.
    try:
        signed_at = datetime.datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        expires = int(q["X-Amz-Expires"])
    except (KeyError, ValueError) as e:
        return f"bad date or expiry: {e}"
    if signed_at.strftime("%Y%m%d") != day:
        return "the scope's day is not the signature's"
    expires_at = signed_at.timestamp() + expires
    now = time.time()
    if expires <= 0 or expires > 900 or now >= expires_at:
        return f"expired (signed {q['X-Amz-Date']}, valid {expires}s)"
    if signed_at.timestamp() > now + 300:
        return "signed in the future"
    with open(keys_file) as f:
        keys = json.load(f)
    known = keys.get(access_key)
    if known is None:
        return f"unknown access key {access_key}"
    if known.get("expires") is not None and now >= known["expires"]:
        return f"the credentials of {access_key} expired at {known['expires']}"
    if q.get("X-Amz-Security-Token") != known.get("token"):
        return "the session token is not the access key's"

    creds = botocore.credentials.Credentials(access_key, known["secret"], known.get("token"))
    request = AWSRequest(method="GET", url=f"https://{parts.netloc}/?Action=kafka-cluster%3AConnect")
    botocore.auth.get_current_datetime = lambda: signed_at.replace(tzinfo=None)
    botocore.auth.SigV4QueryAuth(creds, "kafka-cluster", scope_region, expires=expires).add_auth(request)
    want = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.url).query))["X-Amz-Signature"]
    if want != q.get("X-Amz-Signature"):
        return "signature mismatch"
    limit = expires_at if known.get("expires") is None else min(expires_at, known["expires"])
    return {"ok": True, "access_key": access_key, "expires_ms": int(limit * 1000)}


def main():
    region, keys_file = sys.argv[1], sys.argv[2]
    for line in sys.stdin:
        token = line.strip()
        try:
            answer = check(token, region, keys_file)
        except Exception as e:  # noqa: BLE001 - report, keep serving
            answer = f"verifier error: {e!r}"
        if isinstance(answer, str):
            answer = {"ok": False, "why": answer}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
