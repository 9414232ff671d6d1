#!/usr/bin/env bash
# Rebuilds samples/bin/ from samples/src/: four toolchain builds of four
# versions of sample.dll (plus samplehost.dll), the linker maps, the
# function ground truth and, per version pair, the diff ground truth
# (tools/difftruth.py, from the objects), then verifies everything
# (tools/verify.py).
#
# Needs: gcc-mingw-w64-x86-64 clang lld llvm (Debian/Ubuntu package names)
# and python3. Reproducible: running it twice gives byte-identical files.
#
#   ./build.sh            build and verify
#   KEEP_OBJ=1 ./build.sh keep the intermediate objects and debug images in obj/
set -euo pipefail

cd "$(dirname "$0")"
export LC_ALL=C TZ=UTC PYTHONDONTWRITEBYTECODE=1
unset SOURCE_DATE_EPOCH
PYTHON=${PYTHON:-python3}

SRCS="hp_rt hp_loadcfg hp_crc hp_state hp_tlv hp_pkt hp_esc hp_ring hp_vm hp_expr hp_fsm"
BUILDS="x64-gcc x64-clang arm64-clang x64-clang-hotpatch"
VERSIONS="1 2 3 4"

GCC=x86_64-w64-mingw32-gcc
for tool in $GCC clang lld-link llvm-dlltool llvm-objcopy llvm-objdump llvm-dwarfdump llvm-readobj; do
    command -v "$tool" >/dev/null || { echo "build.sh: missing $tool" >&2; exit 1; }
done

rm -rf obj bin
mkdir -p obj bin

# Flags shared by every build of sample.dll. All builds are -O2, freestanding
# (no C runtime), no stack protector, one section per function.
COMMON="-O2 -ffreestanding -fno-stack-protector -ffunction-sections -Wall -Wextra"
# The objects carry DWARF so that the debug link can give exact function
# extents; the shipped images carry no debug information.
DEBUG_MAP="-ffile-prefix-map=$PWD=."

# build_sample OBJDIR OUTDIR DEFINES: one sample.dll (plus its stripped copy, map and
# function truth) for the current build, compiled with DEFINES.
build_sample() {
    local vo=$1 out=$2 defines=$3
    mkdir -p "$vo/debug" "$out"
    objs=""
    for s in $SRCS; do
        extra=""
        # the memory primitives must not be turned into calls to themselves
        [ $s = hp_rt ] && [ $kind = gnu ] && extra="-fno-tree-loop-distribute-patterns"
        if [ $kind = gnu ]; then
            $GCC $CFLAGS $extra $defines -c src/$s.c -o $vo/$s.o
            objs="$objs $vo/$s.o"
        else
            clang $CFLAGS $defines -c src/$s.c -o $vo/$s.obj
            objs="$objs $vo/$s.obj"
        fi
    done

    if [ $kind = gnu ]; then
        LDFLAGS="-shared -nostdlib -Wl,--entry=DllMain -Wl,--no-insert-timestamp -Wl,--image-base=0x180000000"
        # debug image (DWARF) and shipped image (debug stripped at link time);
        # same file name, so that the export directory names the same DLL
        $GCC $LDFLAGS -Wl,-Map=$vo/debug/sample.map -o $vo/debug/sample.dll $objs $o/samplehost.lib
        $GCC $LDFLAGS -Wl,--strip-debug -Wl,-Map=$out/sample.map -o $out/sample.dll $objs $o/samplehost.lib
    else
        # One link with DWARF; the shipped image is that link with the
        # debug sections removed, so its layout is identical by construction.
        lld-link /nologo /dll /nodefaultlib /entry:DllMain /machine:$machine /brepro \
            /opt:ref /opt:noicf /debug:dwarf $LDEXTRA /lldmap:$out/sample.map \
            /out:$vo/debug/sample.dll $objs $o/samplehost.lib
        llvm-objcopy --strip-debug $vo/debug/sample.dll $out/sample.dll
    fi
    llvm-objcopy --strip-all $out/sample.dll $out/sample.stripped.dll
    cp $o/host/samplehost.dll $o/host/samplehost.funcs.tsv $o/host/samplehost.textdata.tsv $out/

    $PYTHON tools/truth.py --debug-image $vo/debug/sample.dll --shipped $out/sample.dll \
        --map $out/sample.map --map-kind $kind \
        --out $out/sample.funcs.tsv --data-out $out/sample.textdata.tsv
}

for build in $BUILDS; do
    o=obj/$build
    mkdir -p "$o/host"
    case $build in
    x64-gcc)
        kind=gnu
        CFLAGS="$COMMON -fno-ipa-icf -g $DEBUG_MAP"
        ;;
    x64-clang)
        kind=lld; machine=x64; dllmachine=i386:x86-64
        CFLAGS="--target=x86_64-pc-windows-msvc $COMMON -fasynchronous-unwind-tables -g -gdwarf -fdebug-compilation-dir=. $DEBUG_MAP"
        LDEXTRA=""
        ;;
    arm64-clang)
        kind=lld; machine=arm64; dllmachine=arm64
        CFLAGS="--target=aarch64-pc-windows-msvc $COMMON -fasynchronous-unwind-tables -g -gdwarf -fdebug-compilation-dir=. $DEBUG_MAP"
        LDEXTRA=""
        ;;
    x64-clang-hotpatch)
        # lld-link applies /functionpadmin only to objects that CodeView marks
        # as hotpatchable, hence -gcodeview next to the DWARF.
        kind=lld; machine=x64; dllmachine=i386:x86-64
        CFLAGS="--target=x86_64-pc-windows-msvc $COMMON -fasynchronous-unwind-tables -fms-hotpatch -g -gdwarf -gcodeview -fdebug-compilation-dir=. $DEBUG_MAP"
        LDEXTRA="/functionpadmin:6"
        ;;
    esac

    # ---- samplehost.dll and its import library --------------------------
    # Built like sample.dll: a DWARF link for the ground truth, shipped without it.
    mkdir -p $o/host/debug
    if [ $kind = gnu ]; then
        $GCC -O2 -ffreestanding -fno-stack-protector -fno-tree-loop-distribute-patterns \
            -ffunction-sections -Wall -Wextra -g $DEBUG_MAP -c src/samplehost.c -o $o/host/samplehost.o
        HOSTLD="-shared -nostdlib -Wl,--entry=HostDllMain -Wl,--no-insert-timestamp -Wl,--image-base=0x1c0000000"
        $GCC $HOSTLD -Wl,-Map=$o/host/debug/samplehost.map \
            -o $o/host/debug/samplehost.dll $o/host/samplehost.o src/samplehost.def
        $GCC $HOSTLD -Wl,--strip-debug -Wl,-Map=$o/host/samplehost.map \
            -o $o/host/samplehost.dll $o/host/samplehost.o src/samplehost.def
        llvm-dlltool -m i386:x86-64 -d src/samplehost.def -l $o/samplehost.lib
    else
        clang ${CFLAGS%% *} -O2 -ffreestanding -fno-stack-protector -fasynchronous-unwind-tables \
            -ffunction-sections -Wall -Wextra -g -gdwarf -fdebug-compilation-dir=. $DEBUG_MAP \
            -c src/samplehost.c -o $o/host/samplehost.obj
        lld-link /nologo /dll /nodefaultlib /entry:HostDllMain /machine:$machine /brepro \
            /opt:ref /opt:noicf /base:0x1c0000000 /def:src/samplehost.def /debug:dwarf \
            /lldmap:$o/host/samplehost.map /implib:$o/host/samplehost.implib.lib \
            /out:$o/host/debug/samplehost.dll $o/host/samplehost.obj
        llvm-objcopy --strip-debug $o/host/debug/samplehost.dll $o/host/samplehost.dll
        llvm-dlltool -m $dllmachine -d src/samplehost.def -l $o/samplehost.lib
    fi
    $PYTHON tools/truth.py --debug-image $o/host/debug/samplehost.dll --shipped $o/host/samplehost.dll \
        --map $o/host/samplehost.map --map-kind $kind \
        --out $o/host/samplehost.funcs.tsv --data-out $o/host/samplehost.textdata.tsv

    for v in $VERSIONS; do
        build_sample $o/v$v bin/$build/v$v "-DHP_VERSION=$v"
    done

    # ---- diff truth per version pair, from the objects of both versions ----
    $PYTHON tools/difftruth.py --obj $o --bin bin/$build --implib $o/samplehost.lib \
        --pairs 1-2,1-3,2-3,1-4
    # v1 with one early function (DllMain) grown, so that everything after it moves:
    # a diff against v1 must report that one function and nothing else.
    build_sample $o/grown-v1 bin/$build/grown-v1 "-DHP_VERSION=1 -DHP_GROW=1"
    # v3 with a fix that calls a host function no version imports: a new import.
    build_sample $o/import-v3 bin/$build/import-v3 "-DHP_VERSION=3 -DHP_NEW_IMPORT=1"
    # v3 with a fix that adds globals (initialised, zeroed, and a pointer to a new string).
    build_sample $o/global-v3 bin/$build/global-v3 "-DHP_VERSION=3 -DHP_NEW_GLOBAL=1"
    # v3 with a field inserted into a structure live objects have: must stay blocked.
    build_sample $o/struct-v3 bin/$build/struct-v3 "-DHP_VERSION=3 -DHP_RING_FIELD=1"
done

$PYTHON tools/verify.py bin

if [ "${KEEP_OBJ:-0}" != 1 ]; then
    rm -rf obj
fi
