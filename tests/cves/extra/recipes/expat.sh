# expat: the XML parser library (lib/xmlparse.c, xmlrole.c, xmltok.c). Medium-small; two updates, the second adds API.
PKG=expat
DEBVER=2.5.0-1+deb12u2
ORIG=expat_2.5.0.orig.tar.gz
TOP=expat-2.5.0
DLL=libexpat.dll
STEPS=(
  "v1|2.5.0-1+deb12u1|CVE-2024-45490 CVE-2024-45491 CVE-2024-45492|CVE-2024-45490 CVE-2024-45491 CVE-2024-45492"
  "v2|2.5.0-1+deb12u2|CVE-2023-52425 CVE-2024-50602 CVE-2024-8176|expat-2.5.0-CVE-2023-52425 expat-2.5.0-CVE-2024-50602 expat-2.5.0-CVE-2024-8176"
)
CFLAGS_LIB="-Disnan=__builtin_isnan -DHAVE_EXPAT_CONFIG_H -Iexpat -Iexpat/lib"
PUBHDRS="expat/lib/expat.h"
srcs() { echo expat/lib/xmlparse.c expat/lib/xmlrole.c expat/lib/xmltok.c; }
prepare() {  # what configure would generate (Debian's options: XML_DTD, XML_NS, XML_CONTEXT_BYTES=1024)
  printf '%s\n' '#ifndef EXPAT_CONFIG_H' '#define EXPAT_CONFIG_H 1' '#define BYTEORDER 1234' \
    '#define HAVE_INTTYPES_H 1' '#define HAVE_MEMORY_H 1' '#define HAVE_STDINT_H 1' '#define HAVE_STDLIB_H 1' \
    '#define HAVE_STRING_H 1' '#define HAVE_SYS_STAT_H 1' '#define HAVE_SYS_TYPES_H 1' '#define STDC_HEADERS 1' \
    '#define PACKAGE "expat"' '#define PACKAGE_NAME "expat"' '#define PACKAGE_VERSION "2.5.0"' \
    '#define XML_CONTEXT_BYTES 1024' '#define XML_DTD 1' '#define XML_NS 1' '#endif' > expat/expat_config.h
}
