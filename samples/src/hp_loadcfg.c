/* The load configuration directory, as the MSVC C runtime provides it: linkers
 * point the image's LOAD_CONFIG data directory at `_load_config_used`. It carries
 * the security cookie's address and the hybrid (CHPE) metadata pointer that
 * hotpatch tooling checks. Layout: IMAGE_LOAD_CONFIG_DIRECTORY64 up to
 * VolatileMetadataPointer (0x108 bytes). */
#include "hp.h"

typedef struct {
    u32 Size;
    u32 TimeDateStamp;
    u16 MajorVersion;
    u16 MinorVersion;
    u32 GlobalFlagsClear;
    u32 GlobalFlagsSet;
    u32 CriticalSectionDefaultTimeout;
    u64 DeCommitFreeBlockThreshold;
    u64 DeCommitTotalFreeThreshold;
    u64 LockPrefixTable;
    u64 MaximumAllocationSize;
    u64 VirtualMemoryThreshold;
    u64 ProcessAffinityMask;
    u32 ProcessHeapFlags;
    u16 CSDVersion;
    u16 DependentLoadFlags;
    u64 EditList;
    u64 SecurityCookie;
    u64 SEHandlerTable;
    u64 SEHandlerCount;
    u64 GuardCFCheckFunctionPointer;
    u64 GuardCFDispatchFunctionPointer;
    u64 GuardCFFunctionTable;
    u64 GuardCFFunctionCount;
    u32 GuardFlags;
    u8 CodeIntegrity[12];
    u64 GuardAddressTakenIatEntryTable;
    u64 GuardAddressTakenIatEntryCount;
    u64 GuardLongJumpTargetTable;
    u64 GuardLongJumpTargetCount;
    u64 DynamicValueRelocTable;
    u64 CHPEMetadataPointer;
    u64 GuardRFFailureRoutine;
    u64 GuardRFFailureRoutineFunctionPointer;
    u32 DynamicValueRelocTableOffset;
    u16 DynamicValueRelocTableSection;
    u16 Reserved2;
    u64 GuardRFVerifyStackPointerFunctionPointer;
    u32 HotPatchTableOffset;
    u32 Reserved3;
    u64 EnclaveConfigurationPointer;
    u64 VolatileMetadataPointer;
} load_config_t;

_Static_assert(__builtin_offsetof(load_config_t, SecurityCookie) == 0x58, "layout");
_Static_assert(__builtin_offsetof(load_config_t, CHPEMetadataPointer) == 0xC8, "layout");
_Static_assert(__builtin_offsetof(load_config_t, HotPatchTableOffset) == 0xF0, "layout");
_Static_assert(sizeof(load_config_t) == 0x108, "layout");

/* The default cookie value the MSVC runtime starts from. */
u64 __security_cookie = 0x00002B992DDFA232ULL;

const load_config_t _load_config_used = {
    .Size = sizeof(load_config_t),
    .SecurityCookie = (u64)&__security_cookie,
};
