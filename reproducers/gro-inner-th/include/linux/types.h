/* Stub for bpftrace's clang front end. Where bpftrace does not use the kernel's BTF (seen with
 * Debian 5.10 guests) it parses a prelude that includes <linux/types.h>, and the guest has no
 * kernel headers. The gro-inner-th program reads raw offsets (from btf_offsets.py) and uses no
 * kernel types, so these few typedefs are all the prelude needs. */
#ifndef _LINUX_TYPES_H
#define _LINUX_TYPES_H
typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u16 __le16;
typedef __u32 __le32;
typedef __u64 __le64;
typedef __u16 __sum16;
typedef __u32 __wsum;
#endif
