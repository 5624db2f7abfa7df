#!/usr/bin/env bash
# Downloads the official CIFAR-10 binary archive (Krizhevsky, 2009) and verifies its checksum.
#
#   scripts/download-cifar10.sh [DIR]     (default: data)
#
# DIR/cifar-10-batches-bin then holds data_batch_1..5.bin, test_batch.bin and
# batches.meta.txt, ready for `vitk train --data DIR/cifar-10-batches-bin`.
set -euo pipefail
dir="${1:-data}"
url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
md5="c32a1d4ab5d03f1284b67883e8d87530" # published next to the archive
archive="$dir/cifar-10-binary.tar.gz"
mkdir -p "$dir"
if [[ -f "$dir/cifar-10-batches-bin/test_batch.bin" ]]; then
  echo "$dir/cifar-10-batches-bin already present"
  exit 0
fi
if [[ ! -f "$archive" ]]; then
  echo "downloading $url" >&2
  if command -v curl >/dev/null; then
    curl -fL --retry 3 -o "$archive.part" "$url"
  else
    wget -O "$archive.part" "$url"
  fi
  mv "$archive.part" "$archive"
fi
got="$(md5sum "$archive" | cut -d' ' -f1)"
if [[ "$got" != "$md5" ]]; then
  echo "error: $archive: md5 $got, expected $md5 (corrupt or incomplete download; delete it and retry)" >&2
  exit 1
fi
tar xzf "$archive" -C "$dir"
ls -l "$dir/cifar-10-batches-bin"
