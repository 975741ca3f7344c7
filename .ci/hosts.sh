#!/usr/bin/env bash
# Lists lanyard-group.test twice in /etc/hosts (127.0.0.2 and 127.0.0.3), as
# a DNS name with two A records looks to the resolver: the HA test of an
# agent that knows its group by one name (tests/tests/e2e/ha_group.rs) needs
# it, and skips with the reason where it is missing. Adds nothing twice.
set -euo pipefail

name=lanyard-group.test
# A file whose last line has no newline would swallow the first line added.
if [ -s /etc/hosts ] && [ -n "$(tail -c1 /etc/hosts)" ]; then
  echo >>/etc/hosts 2>/dev/null || true
fi
for address in 127.0.0.2 127.0.0.3; do
  if ! grep -qE "^${address//./\\.}[[:space:]]+${name//./\\.}\$" /etc/hosts 2>/dev/null; then
    if ! printf '%s %s\n' "$address" "$name" >>/etc/hosts 2>/dev/null; then
      echo "hosts: cannot write /etc/hosts; the one-name HA test will skip"
      exit 0
    fi
  fi
done
# glibc returns every line of a name only with "multi on" (Debian's default).
echo "hosts: $name resolves to $(getent ahostsv4 "$name" | awk '$2 == "STREAM" {print $1}' | sort -u | tr '\n' ' ')"
