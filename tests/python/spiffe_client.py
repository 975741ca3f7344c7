"""Drives the agent's Workload API with py-spiffe, the official SPIFFE Python library.

Usage (with SPIFFE_ENDPOINT_SOCKET=unix:///path/to/api.sock set):
    python spiffe_client.py jwt AUDIENCE
    python spiffe_client.py x509
    python spiffe_client.py x509-bundles
    python spiffe_client.py jwt-bundles

Prints one JSON line on success. On failure prints the exception type and
message to stderr and exits 1.

The client is py-spiffe's default: WorkloadApiClient() reads
SPIFFE_ENDPOINT_SOCKET itself and builds a plain grpcio channel (gRPC C-core)
with no options, so whatever :authority C-core derives from the socket path is
what the agent sees. No deadline is set, as py-spiffe sets none by default.
"""

import json
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from spiffe import WorkloadApiClient


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def authorities_pem(certs):
    # py-spiffe keeps bundle authorities in a set: sort for a stable output.
    return sorted(cert_pem(c) for c in certs)


def jwk(kid, key):
    if isinstance(key, ec.EllipticCurvePublicKey):
        out = ECAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, rsa.RSAPublicKey):
        out = RSAAlgorithm.to_jwk(key, as_dict=True)
    else:
        out = {}
    out["kid"] = kid
    return out


def main(argv):
    if not argv or argv[0] not in ("jwt", "x509", "x509-bundles", "jwt-bundles"):
        raise SystemExit(__doc__)
    mode = argv[0]
    with WorkloadApiClient() as client:
        if mode == "jwt":
            if len(argv) != 2:
                raise SystemExit("jwt needs exactly one AUDIENCE")
            svid = client.fetch_jwt_svid(audience={argv[1]})
            return {"spiffe_id": str(svid.spiffe_id), "token": svid.token}
        if mode == "x509":
            ctx = client.fetch_x509_context()
            svid = ctx.default_svid
            td = svid.spiffe_id.trust_domain
            bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(td)
            key_pem = svid.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
            return {
                "spiffe_id": str(svid.spiffe_id),
                "chain_pem": [cert_pem(c) for c in svid.cert_chain],  # leaf first
                "key_pem": key_pem,
                "bundle_pem": authorities_pem(bundle.x509_authorities) if bundle else [],
                "trust_domain": td.name,
            }
        if mode == "x509-bundles":
            bundles = client.fetch_x509_bundles()
            return {
                "bundles": {
                    b.trust_domain.name: authorities_pem(b.x509_authorities)
                    for b in bundles.bundles
                }
            }
        # jwt-bundles: py-spiffe keeps only kid -> public key, not the JWKS it
        # parsed, so the JWKS is rebuilt from what it understood.
        bundles = client.fetch_jwt_bundles()
        return {
            "bundles": {
                b.trust_domain.name: {
                    "keys": [jwk(kid, key) for kid, key in sorted(b.jwt_authorities.items())]
                }
                for b in bundles.bundles
            }
        }


if __name__ == "__main__":
    try:
        result = main(sys.argv[1:])
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - report whatever the library raised
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result))
