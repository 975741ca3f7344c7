#!/usr/bin/env bash
# Installs the command-line tools the fleet-attestation tests drive as
# independent implementations, from Debian's packages (if missing):
# ssh-keygen (openssh-client: SSH CAs, host and user certificates, SSHSIG
# signatures) and openssl (an RSA host certificate, signatures of challenges).
set -euo pipefail

missing=()
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi
ssh -V 2>&1
openssl version
