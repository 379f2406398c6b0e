#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# checkpatch.sh [CACHE_DIR]   kernel style check of the kernel code in linux-driver/
#
# Runs the kernel's scripts/checkpatch.pl --strict (80 columns) over every .c and .h
# directly in linux-driver/ (the modules and the headers they include; user/ is user
# space and not checked).  Exits non-zero on any error, warning or check.
#
# Debian ships checkpatch.pl only inside the linux-source-<ver> package's tarball, so
# the files checkpatch needs (checkpatch.pl, spelling.txt, const_structs.checkpatch)
# are extracted from it once into CACHE_DIR (default: build/checkpatch at the top of
# the repository, git-ignored), and again only when the tarball changes.
#
# LINUX_SOURCE_TARBALL overrides the tarball (default: the 6.1 of Debian 12's kernel).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${1:-$HERE/../build/checkpatch}
TARBALL=${LINUX_SOURCE_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
FILES=(checkpatch.pl spelling.txt const_structs.checkpatch)

if [ ! -f "$TARBALL" ]; then
	echo "checkpatch: $TARBALL not found: install the Debian package linux-source-6.1" \
		"(apt-get install linux-source-6.1)" >&2
	exit 1
fi

# The tarball's identity: a different linux-source version re-extracts.
stamp="$TARBALL $(stat -c '%s %Y' "$TARBALL")"
if [ "$(cat "$CACHE/stamp" 2>/dev/null)" != "$stamp" ] ||
	! (cd "$CACHE/scripts" 2>/dev/null && ls "${FILES[@]}" >/dev/null 2>&1); then
	# Top directory of Debian's tarball: linux-source-6.1.tar.xz holds linux-source-6.1/.
	top=$(basename "$TARBALL")
	top=${top%.tar*}
	mkdir -p "$CACHE"
	tmp=$(mktemp -d "$CACHE/.extract.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	echo "checkpatch: extracting ${FILES[*]} from $TARBALL into $CACHE"
	tar -xJf "$TARBALL" -C "$tmp" "${FILES[@]/#/$top/scripts/}"
	# Replace the old copy in one rename, so a concurrent run never sees half of it.
	rm -rf "$CACHE/scripts"
	mv "$tmp/$top/scripts" "$CACHE/scripts"
	echo "$stamp" > "$CACHE/stamp"
fi

cd "$HERE"
# Kernel code only: skip the *.mod.c files an in-tree module build leaves behind.
mapfile -t sources < <(ls -- *.c *.h | grep -v '\.mod\.c$')
perl "$CACHE/scripts/checkpatch.pl" --strict --no-tree --max-line-length=80 --quiet \
	--show-types -f "${sources[@]}"
echo "checkpatch: --strict clean: ${sources[*]}"
