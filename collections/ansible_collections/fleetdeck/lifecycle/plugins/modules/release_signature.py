#!/usr/bin/python
# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""Verify a release file's OpenSSH signature (ssh-keygen -Y) against the allowed release signers."""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_signature
short_description: Verify a release file's Ed25519 SSH signature against allowed signers
description:
  - Reads O(src) (a file on the machine the module runs on, or an http(s) URL) and its signature
    C(<src>.sig), made by C(ssh-keygen -Y sign -n <namespace>), and verifies it with C(ssh-keygen -Y verify)
    against an allowed-signers file built from O(signers).
  - Returns the verified content, so that callers use exactly the bytes that were verified.
  - Fails naming the file when the signature is missing, does not match the content (tampered or corrupt),
    or was made by a key that is not one of O(signers). Reads only.
version_added: "0.1.0"
author:
  - fleetdeck maintainers (@fleetdeck)
options:
  src:
    description: Path or http(s) URL of the signed file; its signature is C(<src>.sig).
    type: str
    required: true
  signers:
    description:
      - Public keys accepted as release signers, each as in an C(.pub) file (C(ssh-ed25519 AAAA... comment)).
      - Several keys are accepted at once, for a key change.
    type: list
    elements: str
    required: true
  namespace:
    description: Signature namespace (C(ssh-keygen -n)); a signature made for another purpose is refused.
    type: str
    default: fleetdeck-release
  timeout:
    description: Seconds to wait for each download when O(src) is a URL.
    type: float
    default: 30
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - ssh-keygen of OpenSSH 8.1 or later
"""

EXAMPLES = r"""
- name: Verify the release's checksum file on the controller
  fleetdeck.lifecycle.release_signature:
    src: /srv/releases/refapp-1.1.0-linux-amd64.tar.gz.sha256
    signers:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExampleExampleExample release-2026
  delegate_to: localhost
"""

RETURN = r"""
content: {description: The verified file's text., returned: success, type: str}
signer: {description: SHA256 fingerprint of the key that made the signature., returned: success, type: str}
"""

import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.health import request

PRINCIPAL = "release"
KEY_TYPE = "ssh-ed25519"
FINGERPRINT = re.compile(r"key (SHA256:\S+)")


class Refused(Exception):
    """The release file cannot be trusted; the message says why."""


def allowed_signers(signers, namespace):
    """The allowed-signers file text: one line per key, all for the same principal and namespace."""
    lines = []
    for index, entry in enumerate(signers):
        fields = entry.split()
        if len(fields) < 2 or fields[0] != KEY_TYPE:
            raise ValueError(f"signers[{index}] is not an Ed25519 public key ({KEY_TYPE} AAAA... [comment]): "
                             f"{entry[:40]!r}")
        lines.append(f'{PRINCIPAL} namespaces="{namespace}" {fields[0]} {fields[1]}\n')
    if not lines:
        raise ValueError("signers is empty: name at least one public key")
    return "".join(lines)


def read(src, timeout):
    """The bytes of a path or URL; None when there is no such file."""
    if "://" not in src:
        try:
            with open(src, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
    code, body, error = request(src, timeout)
    if error:
        raise Refused(f"{src}: cannot download it ({error})")
    if code == 404:
        return None
    if code != 200:
        raise Refused(f"{src}: cannot download it (HTTP {code})")
    return body


def verify(module, content, signature, signers, namespace):
    """The signing key's fingerprint; Refused when the signature is not good or not by one of the signers."""
    with tempfile.TemporaryDirectory() as tmp:
        sig_path, allowed_path = os.path.join(tmp, "file.sig"), os.path.join(tmp, "allowed_signers")
        with open(sig_path, "wb") as f:
            f.write(signature)
        with open(allowed_path, "w", encoding="utf-8") as f:
            f.write(allowed_signers(signers, namespace))
        rc, out, err = module.run_command(["ssh-keygen", "-Y", "check-novalidate", "-n", namespace, "-s", sig_path],
                                          data=content, binary_data=True)
        if rc != 0:
            reason = (err or out).strip().splitlines()[-1] if (err or out).strip() else f"rc {rc}"
            raise Refused(f"the signature does not match the file (tampered, corrupt or not for {namespace}): {reason}")
        found = FINGERPRINT.search(out)
        fingerprint = found.group(1) if found else "unknown"
        rc, out, err = module.run_command(["ssh-keygen", "-Y", "verify", "-f", allowed_path, "-I", PRINCIPAL,
                                           "-n", namespace, "-s", sig_path], data=content, binary_data=True)
        if rc != 0:
            raise Refused(f"signed by key {fingerprint}, which is not one of the allowed release signers")
        return fingerprint


def main():
    module = AnsibleModule(
        argument_spec={
            "src": {"type": "str", "required": True},
            "signers": {"type": "list", "elements": "str", "required": True},
            "namespace": {"type": "str", "default": "fleetdeck-release"},
            "timeout": {"type": "float", "default": 30},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        allowed_signers(p["signers"], p["namespace"])
        content = read(p["src"], p["timeout"])
        if content is None:
            raise Refused(f"{p['src']}: no such file")
        signature = read(p["src"] + ".sig", p["timeout"])
        if signature is None:
            raise Refused(f"{p['src']}.sig: no such signature; release signers are set, so releases must be signed")
        signer = verify(module, content, signature, p["signers"], p["namespace"])
    except ValueError as e:
        module.fail_json(msg=str(e))
    except Refused as e:
        message = str(e) if str(e).startswith(p["src"]) else f"{p['src']}: {e}"
        module.fail_json(msg=f"{message}; refusing to install it")
    module.exit_json(changed=False, content=content.decode("utf-8", errors="replace"), signer=signer)


if __name__ == "__main__":
    main()
