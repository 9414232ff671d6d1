# libxml2 2.9.14: the XML/HTML parser, tree, XPath, schemas, RelaxNG, catalogs, reader/writer. Large; the most updates.
# v1 is 2.9.14+dfsg-1.3, the unstable upload that bookworm shipped at release (CVE fixes applied before bookworm);
# v2..v6 are bookworm(-security) updates deb12u2..deb12u6 (deb12u1 was a rebuild).
# deb12u5 amended the CVE-2025-7425 patch; only the amended form survives, so v4 already has it.
# Built without threads, iconv, zlib, lzma, ICU, FTP and HTTP (no socket or iconv import library here).
PKG=libxml2
DEBVER=2.9.14+dfsg-1.3~deb12u6
ORIG=libxml2_2.9.14+dfsg.orig.tar.xz
TOP=libxml2-2.9.14
DLL=libxml2.dll
STEPS=(
  "v1|2.9.14+dfsg-1.3|CVE-2022-40303 CVE-2022-40304 CVE-2023-28484 CVE-2023-29469 CVE-2022-2309|CVE-2022-40303-Fix-integer-overflows-with-XML_PARSE_ CVE-2022-40304-Fix-dict-corruption-caused-by-entity- schemas-Fix-null-pointer-deref-in-xmlSchemaCheckCOSS CVE-2023-28484-Fix-null-deref-in-xmlSchemaFixupCompl CVE-2023-29469-Hashing-of-empty-dict-strings-isn-t-d Reset-nsNr-in-xmlCtxtReset Also-reset-nsNr-in-htmlCtxtReset"
  "v2|2.9.14+dfsg-1.3~deb12u2|CVE-2022-49043 CVE-2024-34459 CVE-2024-56171 CVE-2025-24928 CVE-2025-27113 CVE-2023-39615 CVE-2023-45322 CVE-2024-25062 CVE-2025-32414 CVE-2025-32415|CVE-2022-49043 CVE-2024-34459 CVE-2024-56171 CVE-2025-24928-pre1 CVE-2025-24928 CVE-2025-27113 CVE-2023-39615_1 CVE-2023-39615_2 CVE-2023-45322 CVE-2024-25062 CVE-2025-32414-bug-889-v2.10.4-and-below CVE-2025-32415"
  "v3|2.9.14+dfsg-1.3~deb12u3|CVE-2025-6021 CVE-2025-6170 CVE-2025-49794 CVE-2025-49796|CVE-2025-6021 CVE-2025-6170 CVE-2025-49794_CVE-2025-49796"
  "v4|2.9.14+dfsg-1.3~deb12u4|CVE-2025-7425|CVE-2025-7425"
  "v5|2.9.14+dfsg-1.3~deb12u5|CVE-2025-9714|CVE-2025-9714"
  "v6|2.9.14+dfsg-1.3~deb12u6|CVE-2026-0989 CVE-2026-0990 CVE-2026-0992 CVE-2025-8732 CVE-2026-1757 (and memory-leak/UAF fixes from 2.15.2)|CVE-2026-1757 0029-Fix-memory-leak-of-prefix-in-xmlTextWriterStartEleme CVE-2025-8732 CVE-2026-0990 CVE-2026-0992/01-4af23b523 CVE-2026-0992/02-096402c94 0034-testcatalog-Add-new-tests-for-catalog.c CVE-2026-0989 0036-use-duplicating-variant-in-relaxng-to-mitigate-UAF 0037-fix-memory-leak-in-issue-1054 0038-schematron-fix-additional-memory-leaks-on-error-path 0039-catalog-fix-stack-overflow-from-self-referencing-SGM"
)
CFLAGS_LIB="-DHAVE_CONFIG_H -DLIBXML_STATIC -I. -Iinclude"
PUBHDRS="$(echo include/libxml/*.h)"
srcs() {
  echo SAX.c entities.c encoding.c error.c parserInternals.c parser.c tree.c hash.c list.c xmlIO.c xmlmemory.c uri.c \
    valid.c xlink.c HTMLparser.c HTMLtree.c debugXML.c xpath.c xpointer.c xinclude.c nanohttp.c nanoftp.c \
    catalog.c globals.c threads.c c14n.c xmlstring.c buf.c xmlregexp.c xmlschemas.c xmlschemastypes.c xmlunicode.c \
    xmlreader.c relaxng.c dict.c SAX2.c xmlwriter.c legacy.c chvalid.c pattern.c xmlsave.c xmlmodule.c schematron.c xzlib.c
}
prepare() {  # what configure would generate
  local on="CATALOG DEBUG HTML OUTPUT PATTERN PUSH READER REGEXPS SCHEMAS SCHEMATRON TREE VALID WRITER XINCLUDE XPATH XPTR MODULES C14N SAX1"
  local off="DOCB FTP HTTP ICONV ICU LEGACY LZMA MEM_DEBUG RUN_DEBUG THREADS THREAD_ALLOC TRIO ZLIB ISO8859X"
  local s=(-e 's/@VERSION@/2.9.14/' -e 's/@LIBXML_VERSION_NUMBER@/20914/' -e 's/@LIBXML_VERSION_EXTRA@//' -e 's/@MODULE_EXTENSION@/.dll/')
  for f in $on; do s+=(-e "s/@WITH_$f@/1/"); done
  for f in $off; do s+=(-e "s/@WITH_$f@/0/"); done
  sed "${s[@]}" include/libxml/xmlversion.h.in > include/libxml/xmlversion.h
  printf '%s\n' '#define HAVE_CTYPE_H 1' '#define HAVE_ERRNO_H 1' '#define HAVE_FCNTL_H 1' '#define HAVE_FLOAT_H 1' \
    '#define HAVE_INTTYPES_H 1' '#define HAVE_LIMITS_H 1' '#define HAVE_MALLOC_H 1' '#define HAVE_MATH_H 1' \
    '#define HAVE_STDARG_H 1' '#define HAVE_STDINT_H 1' '#define HAVE_STDLIB_H 1' '#define HAVE_STRING_H 1' \
    '#define HAVE_SYS_STAT_H 1' '#define HAVE_SYS_TYPES_H 1' '#define HAVE_TIME_H 1' '#define HAVE_STAT 1' \
    '#define HAVE_VA_COPY 1' '#define HAVE_LOCALTIME 1' '#define HAVE_TIME 1' '#define HAVE_RAND 1' '#define HAVE_SRAND 1' \
    '#define PACKAGE "libxml2"' '#define VERSION "2.9.14"' '#define XML_SOCKLEN_T int' '#define SEND_ARG2_CAST' \
    '#define GETHOSTBYNAME_ARG_CAST' '#define ICONV_CONST' \
    '#ifdef __NO_ISOCEXT' '#include <stdio.h>' '#define snprintf _snprintf' '#define vsnprintf _vsnprintf' '#endif' > config.h
}
