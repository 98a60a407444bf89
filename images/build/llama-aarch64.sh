#!/bin/bash
# Cross-build llama-cpp-python's aarch64 wheel on an x86_64 Debian host (issue 18): PyPI has no
# aarch64 wheel, and compiling llama.cpp under qemu-user takes hours. Debian's cross toolchain
# (crossbuild-essential-arm64: gcc 12 for bookworm's glibc 2.36) compiles it here; the wheel is
# tagged for the card (manylinux_2_36_aarch64, bookworm's glibc) and cached outside the repo, in
# the wheels folder `gibsey image build --debian` installs from.
#   images/build/llama-aarch64.sh DEST_DIR        (root not needed; ~15-20 min on 2 cores)
# The CPU target is plain ARMv8-A (the Pi 3 and 4's Cortex-A53/A72 have no dotprod): not
# -march=native, which would be the build host's CPU.
set -euo pipefail
dest=${1:?usage: $0 DEST_DIR}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
python=${PYTHON:-python3}
for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++; do
	command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install crossbuild-essential-arm64" >&2; exit 1; }
done
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export CMAKE_ARGS="-DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
-DCMAKE_FIND_ROOT_PATH=/usr/aarch64-linux-gnu -DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER \
-DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY -DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY \
-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a -DGGML_OPENMP=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF"
# --no-cache-dir: pip's wheel cache may hold the host's own (x86_64) build of the same version.
"$python" -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python -w "$work" "llama-cpp-python==$version"
built=$(ls "$work"/llama_cpp_python-*.whl)
# The wheel says the host's platform (scikit-build-core tags it so); its libraries are aarch64.
"$python" - "$built" "$dest" <<'PY'
import re, sys, zipfile, pathlib, hashlib, base64
src, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
tag = "manylinux_2_36_aarch64"
name = re.sub(r"-[^-]+\.whl$", f"-{tag}.whl", src.name)
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest / name, "w", zipfile.ZIP_DEFLATED) as zout:
    record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
    lines = []
    for info in zin.infolist():
        data = zin.read(info)
        if info.filename.endswith(".dist-info/WHEEL"):
            text = re.sub(r"^Tag: (\S+)-(\S+)-\S+$", rf"Tag: \1-\2-{tag}", data.decode(), flags=re.M)
            data = text.encode()
        if info.filename == record_name:
            continue
        if info.filename.endswith(".so") or ".so." in info.filename:
            assert data[18] == 0xB7, f"{info.filename} is not aarch64"  # e_machine EM_AARCH64
        zout.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{info.filename},sha256={digest},{len(data)}")
    lines.append(f"{record_name},,")
    zout.writestr(record_name, "\n".join(lines) + "\n")
print(dest / name)
PY
