# openjpeg2: the JPEG 2000 codec library (src/lib/openjp2/*.c, with the JPIP index writers as Debian builds it). Medium.
# The CVE-2021-3575 and CVE-2024-56826 patches of v1 touch only the command-line tools (src/bin), not the library.
PKG=openjpeg2
DEBVER=2.5.0-2+deb12u3
ORIG=openjpeg2_2.5.0.orig.tar.xz
TOP=openjpeg-2.5.0
DLL=libopenjp2.dll
STEPS=(
  "v1|2.5.0-2+deb12u1|CVE-2021-3575 CVE-2023-39327 CVE-2024-56826 CVE-2024-56827|CVE-2021-3575 CVE-2023-39327 CVE-2024-56826 CVE-2024-56827"
  "v2|2.5.0-2+deb12u2|CVE-2025-50952|0001-opj_dwt_decode_tile-avoid-potential-UndefinedBehavio"
  "v3|2.5.0-2+deb12u3|CVE-2026-6192|CVE-2026-6192"
)
CFLAGS_LIB="-Dlrintf=__builtin_lrintf -DOPJ_STATIC -DUSE_JPIP -Isrc/lib/openjp2"
PUBHDRS="src/lib/openjp2/openjpeg.h"
srcs() {
  for f in thread bio cio dwt event ht_dec image invert j2k jp2 mct mqc openjpeg opj_clock pi t1 t2 tcd tgt \
           function_list opj_malloc sparse_array cidx_manager phix_manager ppix_manager thix_manager tpix_manager; do
    echo src/lib/openjp2/$f.c
  done
}
prepare() {  # what CMake would generate
  printf '%s\n' '#define OPJ_HAVE_STDINT_H 1' '#define OPJ_VERSION_MAJOR 2' '#define OPJ_VERSION_MINOR 5' \
    '#define OPJ_VERSION_BUILD 0' > src/lib/openjp2/opj_config.h
  printf '%s\n' '#define OPJ_HAVE_INTTYPES_H 1' '#define OPJ_PACKAGE_VERSION "2.5.0"' > src/lib/openjp2/opj_config_private.h
}
