#!/usr/bin/env bash
# Debian packages the project uses: NIST's sclite (sctk) as the reference WER scorer in the tests,
# then the text-to-speech engines of the synthetic corpus builder (install_tts.sh).
# Idempotent and quick when everything is present. Needs root (or sudo) only when something is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
fi
if ! dpkg-query -W -f='${Status}\n' sctk 2>/dev/null | grep -q '^install ok installed$'; then
    if [[ $(id -u) -ne 0 && -z $SUDO ]]; then
        echo "install_apt: sctk is missing and this user cannot install packages; WER cross-checks will skip" >&2
    else
        $SUDO apt-get -q update
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get -y -q -o Dpkg::Use-Pty=0 install --no-install-recommends sctk
    fi
fi
if [[ $(id -u) -ne 0 && -n $SUDO ]]; then
    sudo -n bash "$here/install_tts.sh"
elif [[ $(id -u) -eq 0 ]]; then
    bash "$here/install_tts.sh"
else
    echo "install_apt: not root; the synthetic corpus builder needs: sudo bash corpora/install_tts.sh" >&2
fi
