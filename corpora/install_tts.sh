#!/usr/bin/env bash
# Install the Debian text-to-speech engines, voices and tools that `speechtl-corpus synth` uses.
# Run as root. Idempotent: when every package is present it only checks and exits (well under a second).
# Enables the contrib and non-free components (mbrola, RHVoice, pico and some festival voices live there)
# by adding them to the machine's existing Debian sources entry.
set -euo pipefail

MAIN_PKGS=(espeak-ng sox libsox-fmt-all flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
           wordnet-base)
NONFREE_PKGS=(mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 mbrola-de1 mbrola-de2 mbrola-fr1 mbrola-fr4
              festvox-rablpc16k festvox-don libttspico-utils rhvoice rhvoice-english)

missing() {  # prints the packages among "$@" that are not installed
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
    done
}

mapfile -t need_main < <(missing "${MAIN_PKGS[@]}")
mapfile -t need_nonfree < <(missing "${NONFREE_PKGS[@]}")
if [[ ${#need_main[@]} -eq 0 && ${#need_nonfree[@]} -eq 0 ]]; then
    echo "install_tts: all ${#MAIN_PKGS[@]}+${#NONFREE_PKGS[@]} packages already installed"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install_tts: missing packages: ${need_main[*]} ${need_nonfree[*]}; run this script as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -y -q -o Dpkg::Use-Pty=0 install --no-install-recommends)

if [[ ${#need_main[@]} -gt 0 ]]; then
    apt-get -q update
    "${APT[@]}" "${need_main[@]}"
fi

if [[ ${#need_nonfree[@]} -gt 0 ]]; then
    changed=0
    deb822=/etc/apt/sources.list.d/debian.sources
    if [[ -f $deb822 ]]; then
        # Add the missing components to every "Components:" line of the existing entry.
        for comp in contrib non-free; do
            if grep -E '^Components:' "$deb822" | grep -vqw -- "$comp"; then
                sed -i -E "/^Components:/{/[[:space:]]$comp([[:space:]]|\$)/! s/\$/ $comp/}" "$deb822"
                changed=1
            fi
        done
    elif [[ -f /etc/apt/sources.list ]]; then
        for comp in contrib non-free; do
            if grep -E '^deb(-src)?[[:space:]].*[[:space:]]main([[:space:]]|$)' /etc/apt/sources.list \
                | grep -vqw -- "$comp"; then
                sed -i -E "/^deb(-src)?[[:space:]].*[[:space:]]main([[:space:]]|\$)/{/[[:space:]]$comp([[:space:]]|\$)/! s/\$/ $comp/}" \
                    /etc/apt/sources.list
                changed=1
            fi
        done
    else
        echo "install_tts: found neither $deb822 nor /etc/apt/sources.list; add contrib non-free by hand" >&2
        exit 1
    fi
    [[ $changed -eq 1 ]] && echo "install_tts: enabled contrib non-free in the Debian sources"
    apt-get -q update
    "${APT[@]}" "${need_nonfree[@]}"
fi

still=$(missing "${MAIN_PKGS[@]}" "${NONFREE_PKGS[@]}")
if [[ -n $still ]]; then
    echo "install_tts: still missing after install: $still" >&2
    exit 1
fi
echo "install_tts: done"
