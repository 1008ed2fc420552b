#!/usr/bin/env bash
# Assemble the emulated Raspberry-Pi-class target: an ARM64 Debian userland with Python 3.11,
# numpy and tflite-runtime, run on this machine with Debian's qemu-user-static.
#
#   bash devices/build_rpi_emu.sh [ROOT]      # default ROOT: ~/.cache/edgecnn/rpi-emu
#
# Libraries come from Debian bookworm arm64 .debs (`apt-get download` with its own APT
# architecture, lists and cache, so the host's apt state is untouched), unpacked with dpkg -x;
# numpy and tflite-runtime are aarch64 wheels (manylinux up to glibc 2.34; bookworm has 2.36;
# tflite-runtime needs numpy<2).
# onnxruntime, ai-edge-litert and openvino aarch64 wheels are added too (EDGECNN_RPI_EMU_ORT=0,
# EDGECNN_RPI_EMU_LITERT=0 and EDGECNN_RPI_EMU_OPENVINO=0 leave them out; openvino's wheel is
# manylinux_2_35, which bookworm's glibc 2.36 runs, and its ARM CPU plugin runs under qemu-user).
# Idempotent: a ROOT finished by this version of the script (ROOT/.complete holds BUILD) is left
# as it is; a half-built or older one is redone.
set -euo pipefail

ROOT="${1:-${EDGECNN_RPI_EMU_ROOT:-$HOME/.cache/edgecnn/rpi-emu}}"
SUITE="${EDGECNN_RPI_EMU_SUITE:-bookworm}"
MIRROR="${EDGECNN_RPI_EMU_MIRROR:-http://deb.debian.org/debian}"
WITH_ORT="${EDGECNN_RPI_EMU_ORT:-1}"
WITH_LITERT="${EDGECNN_RPI_EMU_LITERT:-1}"
WITH_OPENVINO="${EDGECNN_RPI_EMU_OPENVINO:-1}"
BUILD="edgecnn-rpi-emu 3 $SUITE ort=$WITH_ORT litert=$WITH_LITERT openvino=$WITH_OPENVINO"
PY=python3.11
PKGS=(
  libc6 libgcc-s1 libstdc++6 gcc-12-base zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5
  libuuid1 libcrypt1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8
  "$PY-minimal" "lib$PY-minimal" "lib$PY-stdlib"
)

# One builder at a time (two test sessions may start it together); the second finds it built.
mkdir -p "$(dirname "$ROOT")"
if command -v flock >/dev/null; then
  exec 9>"$ROOT.lock"
  flock 9
fi
if [ "$(cat "$ROOT/.complete" 2>/dev/null)" = "$BUILD" ]; then
  echo "rpi-emu: $ROOT is already built"
  exit 0
fi
command -v apt-get >/dev/null || { echo "rpi-emu: apt-get is needed (Debian/Ubuntu host)" >&2; exit 1; }
command -v dpkg >/dev/null || { echo "rpi-emu: dpkg is needed" >&2; exit 1; }

WORK="$ROOT.build"
rm -rf "$ROOT" "$WORK"
mkdir -p "$WORK"/{lists/partial,cache/archives/partial,etc/sources.list.d,etc/preferences.d,debs,wheels}
touch "$WORK/status"
echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" \
  > "$WORK/etc/sources.list"
APT=(
  -o APT::Architecture=arm64 -o APT::Architectures=arm64
  -o Dir::State::Lists="$WORK/lists" -o Dir::State::status="$WORK/status"
  -o Dir::Cache="$WORK/cache" -o Dir::Etc::sourcelist="$WORK/etc/sources.list"
  -o Dir::Etc::sourceparts="$WORK/etc/sources.list.d" -o Dir::Etc::preferencesparts="$WORK/etc/preferences.d"
  -o Debug::NoLocking=1 -o APT::Sandbox::User=root
)
echo "rpi-emu: fetching the arm64 package lists of Debian $SUITE"
apt-get "${APT[@]}" -qq update
echo "rpi-emu: downloading ${#PKGS[@]} arm64 .debs"
(cd "$WORK/debs" && apt-get "${APT[@]}" -qq download "${PKGS[@]/%/:arm64}")
mkdir -p "$WORK/root"
for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$WORK/root"; done

WHEELS=("numpy<2" tflite-runtime)
[ "$WITH_ORT" = 1 ] && WHEELS+=(onnxruntime)
[ "$WITH_LITERT" = 1 ] && WHEELS+=(ai-edge-litert)
[ "$WITH_OPENVINO" = 1 ] && WHEELS+=(openvino)
echo "rpi-emu: downloading aarch64 wheels: ${WHEELS[*]}"
PIP=(python3 -m pip)
[ -x "${VIRTUAL_ENV:-}/bin/python" ] && PIP=("$VIRTUAL_ENV/bin/python" -m pip)
PLATFORMS=()
for tag in manylinux2014 manylinux_2_17 manylinux_2_27 manylinux_2_28 manylinux_2_34 manylinux_2_35; do
  PLATFORMS+=(--platform "${tag}_aarch64")
done
"${PIP[@]}" download -q --dest "$WORK/wheels" --only-binary=:all: "${PLATFORMS[@]}" --python-version 3.11 --implementation cp --abi cp311 "${WHEELS[@]}"
SITE="$WORK/root/usr/lib/python3/dist-packages"
mkdir -p "$SITE"
for whl in "$WORK"/wheels/*.whl; do python3 -m zipfile -e "$whl" "$SITE"; done

# A Raspberry Pi 4's /proc/cpuinfo: qemu-user's -L prefix makes the emulated process read
# ROOT/proc/cpuinfo instead of the host's x86 one, on which onnxruntime's cpuinfo crashes.
mkdir -p "$WORK/root/proc"
cat > "$WORK/root/proc/cpuinfo" <<'EOF'
processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

processor	: 1
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

Hardware	: BCM2835
Model		: Raspberry Pi 4 Model B Rev 1.4
EOF
ls "$WORK/debs" "$WORK/wheels" > "$WORK/root/MANIFEST.txt"
mv "$WORK/root" "$ROOT"
rm -rf "$WORK"
echo "$BUILD" > "$ROOT/.complete"
echo "rpi-emu: built $ROOT ($(du -sh "$ROOT" | cut -f1))"
