/*
 * The project's test guest: a few hundred instructions that boot through the
 * Linux x86-64 boot protocol (bzImage, 64-bit entry) or through PVH (ELF
 * note, 32-bit entry), report what they were given on COM1, and then serve a
 * line shell on the serial console. It idles in `hlt` with interrupts on:
 * under an emulating KVM a polling loop would burn a host core.
 *
 * COM1 output:  GUEST-READY / CPUS=<n> / MEM=<MiB> / CMDLINE=<...> /
 *               INITRD=<bytes> / ACPI=<RSDP OEM id> / "> "
 * Shell words:  echo WORDS | poweroff (ACPI PM1a S5) | reboot (i8042 0xFE)
 *               | panic (pvpanic port 0x505) | spin MS
 *               | mmio (read, write, read back unassigned MMIO: MMIO=ones|other)
 *               | fault (int3 with an empty IDT: a triple fault, or KVM's
 *                 internal error under an emulating KVM)
 *               | blkread, blkwrite, blkflush, blkid, blkbad, blkbench
 *                 (virtio-blk: see that section; BLK lines at boot)
 *               | touch MIB | e820 | himem MIB (see the resources block)
 * Command line: "resetatboot" makes it print RESETTING after CMDLINE= and
 *               reset at once (i8042 0xFE), on every boot.
 */

        .set COM1, 0x3f8
        .set PM1A_CNT, 0x604            /* helper's FADT; QEMU piix4/ich9 too */
        .set SLP_EN_S5, 0x2000          /* SLP_EN with SLP_TYP 0, as _S5 says */
        .set PVPANIC, 0x505
        .set KBD_CMD, 0x64
        .set STACK_TOP, 0x80000         /* below 512 KiB, inside every map */
        .set TRAMPOLINE, 0x8000         /* APs start here in real mode (SIPI vector 8) */
        .set UNASSIGNED, 0x3ff00000     /* mapped by our page tables, no RAM or device */

/* ---------------- bzImage real-mode header (never executed) ------------ */
        .section .setup, "a"
        .code16
setup_start:
        .fill 0x1f1, 1, 0
setup_sects:    .byte 1                 /* one setup sector after the boot sector */
root_flags:     .word 0
syssize:        .long 0                 /* unused by 64-bit loaders */
ram_size:       .word 0
vid_mode:       .word 0xffff
root_dev:       .word 0
boot_flag:      .word 0xaa55
jump:           .byte 0xeb, 0x66        /* jmp over the header */
header:         .ascii "HdrS"
version:        .word 0x020f
realmode_swtch: .long 0
start_sys_seg:  .word 0
kernel_version: .word 0
type_of_loader: .byte 0
loadflags:      .byte 0x01              /* LOADED_HIGH */
setup_move_size: .word 0
code32_start:   .long 0x100000
ramdisk_image:  .long 0
ramdisk_size:   .long 0
bootsect_kludge: .long 0
heap_end_ptr:   .word 0
ext_loader_ver: .byte 0
ext_loader_type: .byte 0
cmd_line_ptr:   .long 0
initrd_addr_max: .long 0x7fffffff
kernel_alignment: .long 0x200000
relocatable_kernel: .byte 0
min_alignment:  .byte 0
xloadflags:     .word 0x0001            /* XLF_KERNEL_64: has the 64-bit entry */
cmdline_size:   .long 255
hardware_subarch: .long 0
hardware_subarch_data: .quad 0
payload_offset: .long 0
payload_length: .long 0
setup_data:     .quad 0
pref_address:   .quad 0x100000
init_size:      .long 0x100000
handover_offset: .long 0
kernel_info_offset: .long 0
        .fill 1024 - (. - setup_start), 1, 0

/* ---------------- protected-mode payload, loaded at 1 MiB -------------- */
        .section .text, "ax"
payload_start:
        .code32
        /* 32-bit boot-protocol entry (offset 0): not supported, stop. */
        cli
1:      hlt
        jmp 1b

        .fill 0x200 - (. - payload_start), 1, 0x90
        .code64
/* 64-bit entry (offset 0x200): long mode, identity map, %rsi = boot_params. */
startup_64:
        cli
        movq $STACK_TOP, %rsp
        movl 0x21c(%rsi), %eax          /* hdr.ramdisk_size */
        movq %rax, initrd_size(%rip)
        movl 0x228(%rsi), %eax          /* hdr.cmd_line_ptr */
        movq %rax, %r12                 /* r12: command line */
        movzbl 0x1e8(%rsi), %r14d       /* e820_entries */
        leaq 0x2d0(%rsi), %r13          /* r13: e820 table, 20-byte entries */
        movq $20, %r15                  /* r15: entry stride */
        jmp common

/* PVH entry: 32-bit flat protected mode, paging off, %ebx = hvm_start_info. */
        .code32
        .globl pvh_start
pvh_start:
        cli
        movl $STACK_TOP, %esp
        movl %ebx, %esi
        /* Identity-map the first 1 GiB with 2 MiB pages, then enter long mode. */
        movl $pml4, %edi
        movl $pdpt + 3, (%edi)
        movl $pdpt, %edi
        movl $pd + 3, (%edi)
        movl $pd, %edi
        movl $0x83, %eax                /* present | writable | 2 MiB */
        movl $512, %ecx
2:      movl %eax, (%edi)
        movl $0, 4(%edi)
        addl $0x200000, %eax
        addl $8, %edi
        loop 2b
        movl $pml4, %eax
        movl %eax, %cr3
        movl %cr4, %eax
        orl $0x20, %eax                 /* PAE */
        movl %eax, %cr4
        movl $0xc0000080, %ecx          /* EFER */
        rdmsr
        orl $0x100, %eax                /* LME */
        wrmsr
        movl %cr0, %eax
        orl $0x80000001, %eax           /* PG | PE */
        movl %eax, %cr0
        lgdt gdt_desc
        ljmp $0x08, $pvh_64

        .code64
pvh_64:
        movl $0x10, %eax
        movl %eax, %ds
        movl %eax, %es
        movl %eax, %ss
        movq $STACK_TOP, %rsp
        movl %esi, %esi
        movl 12(%rsi), %eax             /* .nr_modules: the first is the initrd */
        testl %eax, %eax
        jz 44f
        movq 16(%rsi), %rax             /* .modlist_paddr */
        movq 8(%rax), %rax              /* hvm_modlist_entry.size */
        movq %rax, initrd_size(%rip)
44:     movq 24(%rsi), %r12             /* hvm_start_info.cmdline_paddr */
        movl 48(%rsi), %r14d            /* .memmap_entries */
        movq 40(%rsi), %r13             /* .memmap_paddr, 24-byte entries */
        movq $24, %r15

/* Common 64-bit code. r12 cmdline, r13 memory map, r14 entries, r15 stride. */
common:
        call resources_save_map         /* for the e820 command (resources block) */
        /* Our own GDT, and CS reloaded from it: the boot protocol's CS is
           0x10, which is data here, and iretq would reload it. */
        lgdt gdt_desc
        pushq $0x08
        leaq 27f(%rip), %rax
        pushq %rax
        lretq
27:     movl $0x10, %eax
        movl %eax, %ds
        movl %eax, %es
        movl %eax, %ss
        lidt idt_desc
        call install_idt
        leaq msg_ready(%rip), %rsi
        call puts
        call start_aps                  /* rax = CPUs that have run */
        pushq %rax
        leaq msg_cpus(%rip), %rsi
        call puts
        popq %rax
        call putdec
        call newline
        /* MEM=: usable (type 1) bytes in the map, in MiB. */
        xorq %rbx, %rbx
        movq %r13, %rdi
        movq %r14, %rcx
3:      testq %rcx, %rcx
        jz 4f
        cmpl $1, 16(%rdi)
        jne 5f
        addq 8(%rdi), %rbx
5:      addq %r15, %rdi
        decq %rcx
        jmp 3b
4:      movq %rbx, bln_mem(%rip)        /* for the balloon's statistics */
        leaq msg_mem(%rip), %rsi
        call puts
        movq %rbx, %rax
        shrq $20, %rax
        call putdec
        call newline
        leaq msg_cmdline(%rip), %rsi
        call puts
        movq %r12, %rsi
        testq %rsi, %rsi
        jz 6f
        call puts
6:      call newline
        /* "resetatboot" anywhere on the command line: reset at once, every
           boot (tests of guests that reset in a loop). */
        movq %r12, %rbx
        testq %rbx, %rbx
        jz 61f
60:     cmpb $0, (%rbx)
        je 61f
        movq %rbx, %rsi
        leaq w_resetatboot(%rip), %rdi
        call prefix
        jc reset_at_boot
        incq %rbx
        jmp 60b
61:     leaq msg_initrd(%rip), %rsi
        call puts
        movq initrd_size(%rip), %rax
        call putdec
        call newline
        /* ACPI=: the OEM id of the RSDP found in the BIOS area, as Linux
           finds it without firmware. */
        leaq msg_acpi(%rip), %rsi
        call puts
        movq $0xe0000, %rdi
        movabsq $0x2052545020445352, %rax   /* "RSD PTR " */
50:     cmpq $0x100000, %rdi
        jae 52f
        cmpq %rax, (%rdi)
        je 51f
        addq $16, %rdi
        jmp 50b
51:     leaq 9(%rdi), %rsi
        movq $6, %rcx
53:     movb (%rsi), %al
        call putc
        incq %rsi
        loop 53b
52:     call newline
        call msix_cmdline               /* "nomsix": see the MSI-X block */
        call blk_init                   /* BLK lines: see the virtio-blk section */
        call serial_init_irq
shell:
        leaq msg_prompt(%rip), %rsi
        call puts
        call readline                   /* line in linebuf, NUL-terminated */
        leaq linebuf(%rip), %rsi
        leaq w_echo(%rip), %rdi
        call prefix
        jnc 7f
        call puts                       /* rsi now past "echo " */
        call newline
        jmp shell
7:      leaq linebuf(%rip), %rsi
        leaq w_poweroff(%rip), %rdi
        call prefix
        jnc 8f
        movw $SLP_EN_S5, %ax
        movw $PM1A_CNT, %dx
        outw %ax, %dx
        jmp halt_forever
8:      leaq linebuf(%rip), %rsi
        leaq w_reboot(%rip), %rdi
        call prefix
        jnc 9f
        movb $0xfe, %al
        outb %al, $KBD_CMD
        jmp halt_forever
9:      leaq linebuf(%rip), %rsi
        leaq w_panic(%rip), %rdi
        call prefix
        jnc 10f
        movb $1, %al
        movw $PVPANIC, %dx
        outb %al, %dx
        jmp halt_forever
10:     leaq linebuf(%rip), %rsi
        leaq w_spin(%rip), %rdi
        call prefix
        jnc 11f
        call parsedec                   /* rax = milliseconds */
        imulq $1000, %rax               /* about a ms per MS under emulation, less on hardware */
12:     decq %rax
        jnz 12b
        leaq msg_spun(%rip), %rsi
        call puts
        jmp shell
11:     leaq linebuf(%rip), %rsi
        leaq w_mmio(%rip), %rdi
        call prefix
        jnc 13f
        movl $UNASSIGNED, %edi          /* read, write, read back: no device there */
        movl (%rdi), %eax
        movl $0x12345678, (%rdi)
        andl (%rdi), %eax
        leaq msg_mmio_ones(%rip), %rsi
        cmpl $0xffffffff, %eax
        je 14f
        leaq msg_mmio_other(%rip), %rsi
14:     call puts
        jmp shell
13:     leaq linebuf(%rip), %rsi
        leaq w_fault(%rip), %rdi
        call prefix
        jnc .Lnot_fault
        lidt null_idt(%rip)             /* no gate for any vector */
        int3
        jmp halt_forever
.Lnot_fault:
        call blk_command                /* the blk* words, if it is one */
        jc shell
        jmp resources_commands          /* the resources block, below */
.Lunknown_command:
        leaq msg_unknown(%rip), %rsi
        call puts
        jmp shell

/* ---------------- resources (issue 17): memory commands ----------------
 * touch MIB: writes one byte to every 4 KiB page of MIB MiB from 16 MiB up
 *            (at most 1000 MiB, inside the identity map), then prints
 *            TOUCHED=<MiB>; a guest over its memory limit is killed first.
 * e820:      the memory map the boot protocol gave (bzImage E820 or PVH
 *            memmap): E820=<start KiB>+<length KiB>:<type>,... 
 * himem MIB: maps the 1 GiB around physical address MIB MiB (4 GiB up,
 *            below 512 GiB) with 2 MiB pages, writes a pattern to its
 *            first 64 bytes and reads it back: HIMEM=ok|bad <MiB>.
 * Anything else goes on to the virtio-balloon block.
 */
        .set TOUCH_BASE, 0x1000000
/* resources_save_map: keeps the boot memory map (r13 table, r14 entries,
   r15 stride) for the e820 command; changes no register. */
resources_save_map:
        movq %r13, res_map(%rip)
        movq %r14, res_entries(%rip)
        movq %r15, res_stride(%rip)
        ret

resources_commands:
        leaq linebuf(%rip), %rsi
        leaq w_touch(%rip), %rdi
        call prefix
        jc res_touch
        leaq linebuf(%rip), %rsi
        leaq w_e820(%rip), %rdi
        call prefix
        jc res_e820
        leaq linebuf(%rip), %rsi
        leaq w_himem(%rip), %rdi
        call prefix
        jc res_himem
        jmp bln_commands                /* the virtio-balloon block, below */

res_touch:
        call parsedec                   /* rax = MiB */
        cmpq $1000, %rax
        jbe 70f
        movq $1000, %rax
70:     pushq %rax
        movq %rax, %rcx
        shlq $8, %rcx                   /* 256 pages per MiB */
        movq $TOUCH_BASE, %rdi
        testq %rcx, %rcx
        jz 72f
71:     movb $0x5a, (%rdi)
        addq $4096, %rdi
        decq %rcx
        jnz 71b
72:     leaq msg_touched(%rip), %rsi
        call puts
        popq %rax
        call putdec
        call newline
        jmp shell

res_e820:
        leaq msg_e820(%rip), %rsi
        call puts
        movq res_map(%rip), %rbx        /* rbx: entry */
        movq res_entries(%rip), %r8     /* r8: entries left */
        cmpq $128, %r8
        jbe 73f
        movq $128, %r8
73:     testq %r8, %r8
        jz 75f
        movq (%rbx), %rax
        shrq $10, %rax
        call putdec
        movb $'+', %al
        call putc
        movq 8(%rbx), %rax
        shrq $10, %rax
        call putdec
        movb $':', %al
        call putc
        movl 16(%rbx), %eax
        call putdec
        addq res_stride(%rip), %rbx
        decq %r8
        jz 75f
        movb $',', %al
        call putc
        jmp 73b
75:     call newline
        jmp shell

res_himem:
        call parsedec                   /* rax = MiB */
        movq %rax, %r9                  /* r9: MiB, for the answer */
        shlq $20, %rax
        movq %rax, %rbx                 /* rbx: physical address */
        shrq $30, %rax                  /* the PDPT slot of its GiB */
        cmpq $4, %rax
        jb 78f
        cmpq $512, %rax
        jae 78f
        /* PDPT of PML4[0] (identity-mapped low memory in both boot paths). */
        movq %cr3, %rdi
        andq $~0xfff, %rdi
        movq (%rdi), %rdi
        movabsq $0x000ffffffffff000, %rcx
        andq %rcx, %rdi
        leaq res_pd(%rip), %rdx
        orq $3, %rdx
        movq %rdx, (%rdi,%rax,8)
        /* res_pd: 512 2 MiB pages from the GiB's start. */
        movq %rax, %rdx
        shlq $30, %rdx
        orq $0x83, %rdx
        leaq res_pd(%rip), %rdi
        movq $512, %rcx
76:     movq %rdx, (%rdi)
        addq $0x200000, %rdx
        addq $8, %rdi
        decq %rcx
        jnz 76b
        movq %cr3, %rax
        movq %rax, %cr3                 /* flush the TLB */
        /* Write 8 quadwords of a pattern that names the address, read back. */
        movabsq $0x5a5aa5a512345678, %rdx
        xorq %rbx, %rdx
        movq $8, %rcx
        movq %rbx, %rdi
77:     movq %rdx, (%rdi)
        addq $8, %rdi
        decq %rcx
        jnz 77b
        movq $8, %rcx
        movq %rbx, %rdi
79:     cmpq %rdx, (%rdi)
        jne 78f
        addq $8, %rdi
        decq %rcx
        jnz 79b
        leaq msg_himem_ok(%rip), %rsi
        jmp 74f
78:     leaq msg_himem_bad(%rip), %rsi
74:     call puts
        movq %r9, %rax
        call putdec
        call newline
        jmp shell

        .pushsection .rodata, "a"
w_touch:       .asciz "touch "
w_e820:        .asciz "e820"
w_himem:       .asciz "himem "
msg_touched:   .asciz "TOUCHED="
msg_e820:      .asciz "E820="
msg_himem_ok:  .asciz "HIMEM=ok "
msg_himem_bad: .asciz "HIMEM=bad "
        .popsection
        .pushsection .bss, "aw", @nobits
        .align 4096
res_pd:      .fill 4096, 1, 0
res_map:     .quad 0
res_entries: .quad 0
res_stride:  .quad 0
        .popsection
/* ---------------- end of the resources block ---------------- */

/* ---------------- virtio-balloon (issue 17) ----------------
 * A polling driver for the virtio-balloon function (found by a PCI scan
 * on first use; inflate and deflate queues, and the statistics queue when
 * offered: available = usable RAM minus the balloon, unused = that minus
 * the 16 MiB below the balloon's pages, posted at setup and again on a
 * `balloon` command once the device handed the buffer back).
 * balloon:    reads the target (num_pages) from the config space, inflates
 *             (posting the PFNs of the pages from 16 MiB up, the ones
 *             `touch` writes) or deflates to it, at most 1000 MiB, writes
 *             `actual`, and prints BALLOON actual=<MiB in the balloon>;
 *             BALLOON none without the device, BALLOON timeout if it does
 *             not answer.
 * balloonbad: posts a PFN in the PCI hole and one past 16 TiB on the
 *             inflate queue: BALLOONBAD used=<1 if the device answered>.
 */
        .set BLN_BASE, 0x1000000
        .set BLN_MAX, 256000            /* pages: 1000 MiB */
        .set BLN_BATCH, 256

bln_commands:
        leaq linebuf(%rip), %rsi
        leaq w_balloonbad(%rip), %rdi
        call prefix
        jc bln_bad_cmd
        leaq linebuf(%rip), %rsi
        leaq w_balloon(%rip), %rdi
        call prefix
        jc bln_cmd
        jmp .Lunknown_command

/* bln_init: finds and sets up the balloon once; CF set if there is none. */
bln_init:
        cmpl $0, bln_ready(%rip)
        jne 90f
        movl $1, %r12d                  /* slot 0 is the host bridge */
91:     movl %r12d, %edi
        xorl %esi, %esi
        call pci_read32
        cmpl $0x10451af4, %eax
        je 92f
        incl %r12d
        cmpl $32, %r12d
        jb 91b
        stc
        ret
92:     call bln_probe
        cmpl $0, bln_ready(%rip)
        jne 90f
        stc
        ret
90:     clc
        ret

/* bln_probe: sets up the virtio-balloon function in slot r12d. */
bln_probe:
        movl %r12d, %edi
        movl $4, %esi
        call pci_read32
        orl $6, %eax                    /* memory space, bus master */
        movl %eax, %ecx
        call pci_write32
        movl $0x34, %esi
        call pci_read32
        movzbl %al, %r13d               /* r13: capability */
93:     testl %r13d, %r13d
        jz 97f
        movl %r13d, %esi
        call pci_read32
        movl %eax, %r14d                /* r14: id, next, len, type */
        cmpb $0x09, %al
        jne 96f
        leal 4(%r13), %esi
        call pci_read32
        movzbl %al, %r15d               /* r15: BAR index */
        leal 8(%r13), %esi
        call pci_read32
        movl %eax, %r8d                 /* r8: offset in the BAR */
        leal 0x10(,%r15,4), %esi
        call pci_read32
        movl %eax, %r9d
        andl $-16, %r9d
        testb $4, %al                   /* 64-bit BAR: high half next */
        jz 94f
        addl $4, %esi
        call pci_read32
        shlq $32, %rax
        orq %rax, %r9
94:     addq %r8, %r9                   /* r9: the region's address */
        movl %r14d, %eax
        shrl $24, %eax
        cmpl $1, %eax
        jne 1f
        movq %r9, bln_common(%rip)
1:      cmpl $4, %eax
        jne 2f
        movq %r9, bln_devcfg(%rip)
2:      cmpl $2, %eax
        jne 96f
        movq %r9, bln_notify(%rip)
        leal 16(%r13), %esi
        call pci_read32
        movl %eax, bln_mult(%rip)
96:     movl %r14d, %eax
        shrl $8, %eax
        movzbl %al, %r13d
        jmp 93b
97:     movq bln_common(%rip), %rdi
        testq %rdi, %rdi
        jz 98f
        movb $0, 0x14(%rdi)             /* reset */
        movb $1, 0x14(%rdi)             /* ACKNOWLEDGE */
        movb $3, 0x14(%rdi)             /* DRIVER */
        movl $0, 0x00(%rdi)
        movl 0x04(%rdi), %eax
        andl $2, %eax                   /* STATS_VQ, if offered */
        movl %eax, bln_stats(%rip)
        shrl $1, %eax
        addl $2, %eax
        movl %eax, bln_nq(%rip)
        movl $0, 0x08(%rdi)
        movl bln_stats(%rip), %eax
        movl %eax, 0x0c(%rdi)           /* STATS_VQ or nothing, and... */
        movl $1, 0x08(%rdi)
        movl $1, 0x0c(%rdi)             /* ...VERSION_1 */
        movb $0x0b, 0x14(%rdi)          /* FEATURES_OK */
        movb 0x14(%rdi), %al
        testb $8, %al
        jz 98f
        xorl %ecx, %ecx                 /* queues 0 (inflate), 1 (deflate), 2 (stats) */
95:     movw %cx, 0x16(%rdi)
        movw $VQ_SIZE, 0x18(%rdi)
        movl %ecx, %eax
        shll $12, %eax
        leaq bln_queues(%rip), %rdx
        addq %rdx, %rax                 /* rax: the queue's page */
        movl %eax, 0x20(%rdi)           /* descriptors */
        movl $0, 0x24(%rdi)
        leaq 0x100(%rax), %rdx
        movl %edx, 0x28(%rdi)           /* available ring */
        movl $0, 0x2c(%rdi)
        leaq 0x200(%rax), %rdx
        movl %edx, 0x30(%rdi)           /* used ring */
        movl $0, 0x34(%rdi)
        movzwl 0x1e(%rdi), %eax         /* queue_notify_off */
        imull bln_mult(%rip), %eax
        addq bln_notify(%rip), %rax
        leaq bln_qnotify(%rip), %rdx
        movq %rax, (%rdx,%rcx,8)
        movw $1, 0x1c(%rdi)             /* queue_enable */
        incl %ecx
        cmpl bln_nq(%rip), %ecx
        jb 95b
        movb $0x0f, 0x14(%rdi)          /* DRIVER_OK */
        movl $1, bln_ready(%rip)
        cmpl $0, bln_stats(%rip)
        je 98f
        call bln_stats_post
98:     ret

/* bln_stats_post: the statistics buffer, filled, on queue 2 (no wait:
   the device keeps it until the host wants fresh figures). */
bln_stats_post:
        movq bln_mem(%rip), %rax
        movl bln_pages(%rip), %ecx
        shlq $12, %rcx
        subq %rcx, %rax                 /* available */
        leaq bln_sbuf(%rip), %rsi
        movw $5, 0(%rsi)
        movq %rax, 2(%rsi)
        subq $BLN_BASE, %rax            /* unused */
        movw $4, 10(%rsi)
        movq %rax, 12(%rsi)
        movl $20, %edx
        movl $2, %ecx
        jmp bln_kick

/* bln_post: one readable buffer at rsi of edx bytes on queue ecx, then a
   bounded wait for the device to use it; CF set if it did not. */
bln_post:
        call bln_kick
        movl $POLL_BOUND, %edx
1:      movzwl 0x202(%rdi), %eax        /* used.idx */
        cmpw %cx, %ax
        je 2f
        decl %edx
        jnz 1b
        stc
        ret
2:      clc
        ret

/* bln_kick: one readable buffer at rsi of edx bytes on queue ecx, made
   available and notified; returns the queue's page in rdi and its new
   available index in ecx. */
bln_kick:
        pushq %rbx
        movl %ecx, %ebx
        movl %ebx, %eax
        shll $12, %eax
        leaq bln_queues(%rip), %rdi
        addq %rax, %rdi                 /* rdi: the queue's page */
        movq %rsi, 0(%rdi)              /* descriptor 0 */
        movl %edx, 8(%rdi)
        movw $0, 12(%rdi)               /* readable, no next */
        movw $0, 14(%rdi)
        leaq bln_avail(%rip), %rax
        movzwl (%rax,%rbx,2), %ecx
        movl %ecx, %edx
        andl $VQ_SIZE - 1, %edx
        movw $0, 0x104(%rdi,%rdx,2)     /* avail.ring[idx] = head 0 */
        incl %ecx
        movw %cx, (%rax,%rbx,2)
        mfence
        movw %cx, 0x102(%rdi)           /* avail.idx */
        mfence
        leaq bln_qnotify(%rip), %rax
        movq (%rax,%rbx,8), %rax
        movw %bx, (%rax)                /* notify */
        popq %rbx
        ret

/* bln_fill: bln_pfns[0..ecx) = the PFNs of balloon pages eax... */
bln_fill:
        leaq bln_pfns(%rip), %rdi
        addl $BLN_BASE >> 12, %eax
1:      movl %eax, (%rdi)
        addq $4, %rdi
        incl %eax
        decl %ecx
        jnz 1b
        ret

bln_cmd:
        call bln_init
        jc bln_none
        movq bln_devcfg(%rip), %rsi
        movl (%rsi), %r12d              /* r12: the target in pages */
        cmpl $BLN_MAX, %r12d
        jbe .Lbln_loop
        movl $BLN_MAX, %r12d
.Lbln_loop:
        movl bln_pages(%rip), %r13d     /* r13: pages held */
        cmpl %r12d, %r13d
        je .Lbln_done
        jb .Lbln_inflate
        movl %r13d, %ecx                /* deflate the top pages */
        subl %r12d, %ecx
        cmpl $BLN_BATCH, %ecx
        jbe 1f
        movl $BLN_BATCH, %ecx
1:      movl %ecx, %r14d                /* r14: this batch */
        movl %r13d, %eax
        subl %r14d, %eax
        call bln_fill
        leaq bln_pfns(%rip), %rsi
        leal (,%r14,4), %edx
        movl $1, %ecx
        call bln_post
        jc .Lbln_timeout
        subl %r14d, bln_pages(%rip)
        jmp .Lbln_loop
.Lbln_inflate:
        movl %r12d, %ecx
        subl %r13d, %ecx
        cmpl $BLN_BATCH, %ecx
        jbe 2f
        movl $BLN_BATCH, %ecx
2:      movl %ecx, %r14d
        movl %r13d, %eax
        call bln_fill
        leaq bln_pfns(%rip), %rsi
        leal (,%r14,4), %edx
        xorl %ecx, %ecx
        call bln_post
        jc .Lbln_timeout
        addl %r14d, bln_pages(%rip)
        jmp .Lbln_loop
.Lbln_done:
        movq bln_devcfg(%rip), %rsi
        movl %r13d, 4(%rsi)             /* actual */
        cmpl $0, bln_stats(%rip)
        je 3f
        leaq bln_queues+0x2000(%rip), %rdi
        movzwl 0x202(%rdi), %eax        /* the stats queue's used.idx */
        cmpw bln_avail+4(%rip), %ax
        jne 3f                          /* the device still holds it */
        call bln_stats_post
3:
        leaq msg_balloon(%rip), %rsi
        call puts
        movl bln_pages(%rip), %eax
        shrl $8, %eax                   /* 256 pages per MiB */
        call putdec
        call newline
        jmp shell
.Lbln_timeout:
        leaq msg_bln_timeout(%rip), %rsi
        call puts
        call newline
        jmp shell
bln_none:
        leaq msg_bln_none(%rip), %rsi
        call puts
        call newline
        jmp shell

bln_bad_cmd:
        call bln_init
        jc bln_none
        movl $BAD_ADDR >> 12, bln_pfns(%rip)
        movl $0xffffffff, bln_pfns+4(%rip)
        leaq bln_pfns(%rip), %rsi
        movl $8, %edx
        xorl %ecx, %ecx
        call bln_post
        setnc %al
        movzbl %al, %eax
        pushq %rax
        leaq msg_bln_bad(%rip), %rsi
        call puts
        popq %rax
        call putdec
        call newline
        jmp shell

        .pushsection .rodata, "a"
w_balloonbad:    .asciz "balloonbad"
w_balloon:       .asciz "balloon"
msg_balloon:     .asciz "BALLOON actual="
msg_bln_none:    .asciz "BALLOON none"
msg_bln_timeout: .asciz "BALLOON timeout"
msg_bln_bad:     .asciz "BALLOONBAD used="
        .popsection
        .pushsection .bss, "aw", @nobits
        .align 4096
bln_queues:  .fill 4096 * 3, 1, 0
bln_pfns:    .fill 4 * BLN_BATCH, 1, 0
bln_common:  .quad 0
bln_devcfg:  .quad 0
bln_notify:  .quad 0
bln_qnotify: .quad 0, 0, 0
bln_mem:     .quad 0
bln_sbuf:    .fill 20, 1, 0
bln_mult:    .long 0
bln_ready:   .long 0
bln_pages:   .long 0
bln_avail:   .word 0, 0, 0
bln_stats:   .long 0
bln_nq:      .long 0
        .popsection
/* ---------------- end of the virtio-balloon block ---------------- */

/* start_aps: wakes the other CPUs (CPUID leaf 1 says how many) with
   INIT-SIPI through the x2APIC, and waits a bounded time for each to run
   the trampoline. Returns 1 + the APs that checked in. */
start_aps:
        movl $1, %eax
        cpuid
        movl $1, %eax
        btl $28, %edx                   /* HTT: EBX[23:16] is meaningful */
        jnc 40f
        btl $21, %ecx                   /* x2APIC */
        jnc 40f
        shrl $16, %ebx
        movzbl %bl, %r8d                /* r8: CPUs in the package */
        cmpl $1, %r8d
        jbe 40f
        leaq trampoline(%rip), %rsi
        movq $TRAMPOLINE, %rdi
        movq $(trampoline_end - trampoline), %rcx
        rep movsb
        movq %cr3, %rax
        movl %eax, TRAMPOLINE + (tramp_cr3 - trampoline)
        movl $0x1b, %ecx                /* IA32_APIC_BASE: enable x2APIC */
        rdmsr
        orl $0xc00, %eax
        wrmsr
        movl $0x830, %ecx               /* x2APIC ICR, all excluding self */
        xorl %edx, %edx
        movl $0x000c4500, %eax          /* INIT */
        wrmsr
        movl $0x000c4600 + (TRAMPOLINE >> 12), %eax
        wrmsr                           /* SIPI */
        movq $2000000, %rcx             /* bounded wait for the APs */
        decl %r8d
41:     movl ap_count(%rip), %eax
        cmpl %r8d, %eax
        jae 42f
        pause
        decq %rcx
        jnz 41b
42:     movl ap_count(%rip), %eax
        incl %eax
        ret
40:     movl $1, %eax
        ret

/* reset_at_boot: says so, then resets through the keyboard controller as
   "reboot" does. (A triple fault would be the other way, but an emulating
   KVM reports an exception through an empty IDT as an internal error.) */
reset_at_boot:
        leaq msg_resetting(%rip), %rsi
        call puts
        movb $0xfe, %al
        outb %al, $KBD_CMD
        jmp halt_forever

halt_forever:
        cli
13:     hlt
        jmp 13b

/* prefix: CF set and rsi advanced past the word if rsi starts with rdi. */
prefix:
        pushq %rsi
14:     movb (%rdi), %al
        testb %al, %al
        jz 15f
        cmpb (%rsi), %al
        jne 16f
        incq %rdi
        incq %rsi
        jmp 14b
15:     addq $8, %rsp
        stc
        ret
16:     popq %rsi
        clc
        ret

/* parsedec: decimal at rsi to rax. */
parsedec:
        xorq %rax, %rax
17:     movzbq (%rsi), %rcx
        subq $'0', %rcx
        cmpq $9, %rcx
        ja 18f
        imulq $10, %rax
        addq %rcx, %rax
        incq %rsi
        jmp 17b
18:     ret

/* putc: al to COM1, waiting for the transmitter. */
putc:
        pushq %rdx
        pushq %rax
19:     movw $COM1 + 5, %dx
        inb %dx, %al
        testb $0x20, %al
        jz 19b
        popq %rax
        movw $COM1, %dx
        outb %al, %dx
        popq %rdx
        ret

/* puts: NUL-terminated string at rsi. */
puts:
        movb (%rsi), %al
        testb %al, %al
        jz 20f
        call putc
        incq %rsi
        jmp puts
20:     ret

newline:
        movb $'\r', %al
        call putc
        movb $'\n', %al
        jmp putc

/* putdec: rax in decimal. */
putdec:
        leaq numbuf+24(%rip), %rdi
        movb $0, (%rdi)
        movq $10, %rcx
21:     xorq %rdx, %rdx
        divq %rcx
        addb $'0', %dl
        decq %rdi
        movb %dl, (%rdi)
        testq %rax, %rax
        jnz 21b
        movq %rdi, %rsi
        jmp puts

/* readline: echo characters into linebuf until CR or LF; idles in hlt. */
readline:
        leaq linebuf(%rip), %rdi
22:     call getc
        cmpb $'\r', %al
        je 23f
        cmpb $'\n', %al
        je 23f
        leaq linebuf+126(%rip), %rcx
        cmpq %rcx, %rdi
        jae 22b
        movb %al, (%rdi)
        incq %rdi
        call putc
        jmp 22b
23:     movb $0, (%rdi)
        jmp newline

/* getc: next received byte; sleeps in hlt until the UART interrupt. */
getc:
        cli
        movw $COM1 + 5, %dx
        inb %dx, %al
        testb $1, %al
        jnz 24f
        sti
        hlt                             /* sti's shadow: no lost wake-up */
        jmp getc
24:     movw $COM1, %dx
        inb %dx, %al
        sti
        ret

/* serial_init_irq: 8259 PICs remapped to 0x20/0x28, only IRQ4 (COM1) open;
   UART raises its interrupt on received data; ctrl-alt-del via the i8042
   keyboard IRQ1 is also unmasked and powers off. */
serial_init_irq:
        movb $0x11, %al
        outb %al, $0x20
        outb %al, $0xa0
        movb $0x20, %al
        outb %al, $0x21
        movb $0x28, %al
        outb %al, $0xa1
        movb $0x04, %al
        outb %al, $0x21
        movb $0x02, %al
        outb %al, $0xa1
        movb $0x01, %al
        outb %al, $0x21
        outb %al, $0xa1
        movb $0xed, %al                 /* unmask IRQ1 and IRQ4 */
        outb %al, $0x21
        movb $0xff, %al
        outb %al, $0xa1
        movw $COM1 + 1, %dx             /* IER: received data available */
        movb $0x01, %al
        outb %al, %dx
        movw $COM1 + 4, %dx             /* MCR: DTR | RTS | OUT2 (IRQ gate) */
        movb $0x0b, %al
        outb %al, %dx
        sti
        ret

/* install_idt: every vector to a handler that EOIs the PICs; vector 0x21
   (keyboard) checks for the ctrl-alt-del the helper injects. */
install_idt:
        leaq idt(%rip), %rdi
        leaq isr_default(%rip), %rax
        movq $256, %rcx
25:     call set_gate
        addq $16, %rdi
        loop 25b
        leaq idt+0x21*16(%rip), %rdi
        leaq isr_kbd(%rip), %rax
        jmp set_gate

/* set_gate: 64-bit interrupt gate at rdi for handler rax. */
set_gate:
        movw %ax, (%rdi)
        movw $0x08, 2(%rdi)
        movw $0x8e00, 4(%rdi)
        movq %rax, %rdx
        shrq $16, %rdx
        movw %dx, 6(%rdi)
        shrq $16, %rdx
        movl %edx, 8(%rdi)
        movl $0, 12(%rdi)
        ret

isr_default:
        pushq %rax
        movb $0x20, %al
        outb %al, $0xa0
        outb %al, $0x20
        popq %rax
        iretq

isr_kbd:
        pushq %rax
        inb $0x60, %al                  /* scan code: 0x53 is Delete */
        cmpb $0x53, %al
        jne 26f
        movw $SLP_EN_S5, %ax
        pushq %rdx
        movw $PM1A_CNT, %dx
        outw %ax, %dx
        popq %rdx
26:     movb $0x20, %al
        outb %al, $0x20
        popq %rax
        iretq

/* ================= virtio-blk: PCI scan and a polling driver ============
 * At boot: maps the 32-bit PCI hole (3-4 GiB, uncached), scans bus 0
 * through 0xCF8/0xCFC for virtio-blk (1af4:1042) functions, sets each up
 * through its common-cfg capability (VERSION_1 and FLUSH, one queue of 8)
 * and prints "BLK vd<x> SECTORS=<n>". Requests are synchronous: three
 * descriptors (header, data, status), a notify write, then polling the
 * used ring (bounded); no interrupts. Shell words (D: disk index, 0 = vda):
 *   blkread D S       BLKREAD STATUS=<s> SUM=<FNV-1a 32 of the 512 bytes, hex>
 *   blkwrite D S B    fills sector S with byte B: BLKWRITE STATUS=<s>
 *   blkflush D        BLKFLUSH STATUS=<s>
 *   blkid D           BLKID STATUS=<s> SERIAL=<get-id bytes up to NUL>
 *   blkbad D          a read whose data descriptor lies outside guest RAM:
 *                     BLKBAD STATUS=<s>
 *   blkbench D N      N 4 KiB random reads, then N 4 KiB random writes:
 *                     BLKBENCH N=<n> ERRORS=<e> CYCLES=<TSC cycles>
 * A status of 255 means the device did not answer in time.
 */
        .set PCI_ADDR, 0xcf8
        .set PCI_DATA, 0xcfc
        .set VQ_SIZE, 8
        .set MAX_BLK, 4
        .set BLK_STRIDE, 64
        .set D_COMMON, 0
        .set D_NOTIFY, 8
        .set D_DEVCFG, 16
        .set D_CAP, 24
        .set D_AVAIL, 32                /* next avail idx (16-bit) */
        .set D_MULT, 36                 /* notify_off_multiplier */
        .set D_QUEUE, 40                /* the queue's page */
        .set D_MSIX, 48                 /* MSI-X capability offset (32-bit) */
        .set D_MSIXON, 52               /* MSI-X in use (byte) */
        .set BAD_ADDR, 0xf0000000       /* in the PCI hole: no RAM */
        .set POLL_BOUND, 20000000

/* pci_read32: eax = config dword of bus 0 slot edi at register esi. */
pci_read32:
        pushq %rdx
        movl %edi, %eax
        shll $11, %eax
        orl %esi, %eax
        orl $0x80000000, %eax
        movw $PCI_ADDR, %dx
        outl %eax, %dx
        movw $PCI_DATA, %dx
        inl %dx, %eax
        popq %rdx
        ret

/* pci_write32: config dword of slot edi at register esi = ecx. */
pci_write32:
        pushq %rdx
        pushq %rax
        movl %edi, %eax
        shll $11, %eax
        orl %esi, %eax
        orl $0x80000000, %eax
        movw $PCI_ADDR, %dx
        outl %eax, %dx
        movw $PCI_DATA, %dx
        movl %ecx, %eax
        outl %eax, %dx
        popq %rax
        popq %rdx
        ret

/* map_pci_hole: PDPT[3] of the live page tables -> 2 MiB uncached pages
   for 0xC0000000-0xFFFFFFFF, where BARs, ECAM and the APICs live. */
map_pci_hole:
        movq %cr3, %rax
        movabsq $0x000ffffffffff000, %rcx
        andq %rcx, %rax
        movq (%rax), %rax               /* PML4[0] -> PDPT */
        andq %rcx, %rax
        leaq pd_hole(%rip), %rdi
        movq %rdi, %rdx
        orq $3, %rdx
        movq %rdx, 24(%rax)
        movl $0xc000009b, %eax          /* present|rw|PWT|PCD|2 MiB */
        movq $512, %rcx
.Lmap:  movq %rax, (%rdi)
        addq $0x200000, %rax
        addq $8, %rdi
        loop .Lmap
        movq %cr3, %rax
        movq %rax, %cr3
        ret

blk_init:
        pushq %rbx
        pushq %r12
        pushq %r13
        pushq %r14
        pushq %r15
        call map_pci_hole
        movl $1, %r12d                  /* slot 0 is the host bridge */
.Lscan: movl %r12d, %edi
        xorl %esi, %esi
        call pci_read32
        cmpl $0x10421af4, %eax
        jne .Lscan_next
        call blk_probe
.Lscan_next:
        incl %r12d
        cmpl $32, %r12d
        jb .Lscan
        popq %r15
        popq %r14
        popq %r13
        popq %r12
        popq %rbx
        ret

/* blk_probe: sets up the virtio-blk function in slot r12d. */
blk_probe:
        movl blk_count(%rip), %eax
        cmpl $MAX_BLK, %eax
        jae .Lprobe_out
        imull $BLK_STRIDE, %eax
        leaq blk_table(%rip), %rbx
        addq %rax, %rbx                 /* rbx: this disk's entry */
        movl %r12d, %edi
        movl $4, %esi
        call pci_read32
        orl $6, %eax                    /* memory space, bus master */
        movl %eax, %ecx
        call pci_write32
        movl $0x34, %esi
        call pci_read32
        movzbl %al, %r13d               /* r13: capability */
.Lcap:  testl %r13d, %r13d
        jz .Lcaps_done
        movl %r13d, %esi
        call pci_read32
        movl %eax, %r14d                /* r14: id, next, len, type */
        cmpb $0x11, %al                 /* MSI-X: the MSI-X block uses it */
        jne .Lcap_vendor
        movl %r13d, D_MSIX(%rbx)
.Lcap_vendor:
        cmpb $0x09, %al
        jne .Lcap_next
        leal 4(%r13), %esi
        call pci_read32
        movzbl %al, %r15d               /* r15: BAR index */
        leal 8(%r13), %esi
        call pci_read32
        movl %eax, %r8d                 /* r8: offset in the BAR */
        leal 0x10(,%r15,4), %esi
        call pci_read32
        movl %eax, %r9d
        andl $-16, %r9d
        testb $4, %al                   /* 64-bit BAR: high half next */
        jz .Lbar32
        addl $4, %esi
        call pci_read32
        shlq $32, %rax
        orq %rax, %r9
.Lbar32:
        addq %r8, %r9                   /* r9: the region's address */
        movl %r14d, %eax
        shrl $24, %eax
        cmpl $1, %eax
        jne 1f
        movq %r9, D_COMMON(%rbx)
1:      cmpl $4, %eax
        jne 2f
        movq %r9, D_DEVCFG(%rbx)
2:      cmpl $2, %eax
        jne .Lcap_next
        movq %r9, D_NOTIFY(%rbx)
        leal 16(%r13), %esi
        call pci_read32
        movl %eax, D_MULT(%rbx)
.Lcap_next:
        movl %r14d, %eax
        shrl $8, %eax
        movzbl %al, %r13d
        jmp .Lcap
.Lcaps_done:
        movq D_COMMON(%rbx), %rdi
        testq %rdi, %rdi
        jz .Lprobe_out
        movb $0, 0x14(%rdi)             /* reset */
        movb $1, 0x14(%rdi)             /* ACKNOWLEDGE */
        movb $3, 0x14(%rdi)             /* DRIVER */
        movl $1, 0x00(%rdi)
        movl 0x04(%rdi), %eax
        testl $1, %eax                  /* VERSION_1 offered? */
        jz .Lprobe_out
        movl $0, 0x08(%rdi)
        movl $0x200, 0x0c(%rdi)         /* FLUSH */
        movl $1, 0x08(%rdi)
        movl $1, 0x0c(%rdi)             /* VERSION_1 */
        movb $0x0b, 0x14(%rdi)          /* FEATURES_OK */
        movb 0x14(%rdi), %al
        testb $8, %al
        jz .Lprobe_out
        movw $0, 0x16(%rdi)             /* queue 0 */
        movw $VQ_SIZE, 0x18(%rdi)
        movl blk_count(%rip), %eax
        shll $12, %eax
        leaq blk_queues(%rip), %rcx
        addq %rcx, %rax
        movq %rax, D_QUEUE(%rbx)
        movl %eax, 0x20(%rdi)           /* descriptors */
        movl $0, 0x24(%rdi)
        leaq 0x100(%rax), %rcx
        movl %ecx, 0x28(%rdi)           /* available ring */
        movl $0, 0x2c(%rdi)
        leaq 0x200(%rax), %rcx
        movl %ecx, 0x30(%rdi)           /* used ring */
        movl $0, 0x34(%rdi)
        movzwl 0x1e(%rdi), %eax         /* queue_notify_off */
        imull D_MULT(%rbx), %eax
        addq %rax, D_NOTIFY(%rbx)
        call blk_msix_setup             /* vectors before queue_enable */
        movw $1, 0x1c(%rdi)             /* queue_enable */
        movb $0x0f, 0x14(%rdi)          /* DRIVER_OK */
        movq D_DEVCFG(%rbx), %rsi
        movq (%rsi), %rax               /* capacity in sectors */
        movq %rax, D_CAP(%rbx)
        leaq msg_blk(%rip), %rsi
        call puts
        movl blk_count(%rip), %eax
        addb $'a', %al
        call putc
        leaq msg_sectors(%rip), %rsi
        call puts
        movq D_CAP(%rbx), %rax
        call putdec
        call newline
        call blk_msix_line
        incl blk_count(%rip)
.Lprobe_out:
        ret

/* blk_req: one request on disk rbx: type eax, sector rdx, data at rsi of
   ecx bytes (none if 0), data descriptor flags r8d (2: device writes).
   Returns the status in eax (255: no answer in time). */
blk_req:
        pushq %rdi
        movl %eax, blk_hdr(%rip)
        movl $0, blk_hdr+4(%rip)
        movq %rdx, blk_hdr+8(%rip)
        movb $0xee, blk_status(%rip)
        movq D_QUEUE(%rbx), %rdi
        leaq blk_hdr(%rip), %rax
        movq %rax, 0(%rdi)              /* 0: header, readable */
        movl $16, 8(%rdi)
        movw $1, 12(%rdi)
        movw $2, 14(%rdi)
        testl %ecx, %ecx
        jz 1f
        movw $1, 14(%rdi)
        movq %rsi, 16(%rdi)             /* 1: data */
        movl %ecx, 24(%rdi)
        movl %r8d, %eax
        orl $1, %eax
        movw %ax, 28(%rdi)
        movw $2, 30(%rdi)
1:      leaq blk_status(%rip), %rax
        movq %rax, 32(%rdi)             /* 2: status, device-writable */
        movl $1, 40(%rdi)
        movw $2, 44(%rdi)
        movw $0, 46(%rdi)
        movzwl D_AVAIL(%rbx), %eax
        movl %eax, %ecx
        andl $VQ_SIZE - 1, %ecx
        movw $0, 0x104(%rdi,%rcx,2)     /* avail.ring[idx] = head 0 */
        incl %eax
        movw %ax, D_AVAIL(%rbx)
        mfence
        movw %ax, 0x102(%rdi)           /* avail.idx */
        mfence
        movq D_NOTIFY(%rbx), %rcx
        movw $0, (%rcx)                 /* notify queue 0 */
        movl $POLL_BOUND, %ecx
2:      movzwl 0x202(%rdi), %eax        /* used.idx */
        cmpw D_AVAIL(%rbx), %ax
        je 3f
        decl %ecx
        jnz 2b
        movl $255, %eax
        popq %rdi
        ret
3:      movzbl blk_status(%rip), %eax
        popq %rdi
        ret

/* skipsp: rsi past spaces. */
skipsp:
        cmpb $' ', (%rsi)
        jne 1f
        incq %rsi
        jmp skipsp
1:      ret

/* blk_disk: parses the disk index at rsi into rbx; CF set if no such disk. */
blk_disk:
        call skipsp
        call parsedec
        cmpl blk_count(%rip), %eax
        jae 1f
        imull $BLK_STRIDE, %eax
        leaq blk_table(%rip), %rbx
        addq %rax, %rbx
        clc
        ret
1:      stc
        ret

/* fnv1a: eax = FNV-1a 32 of rcx bytes at rsi. */
fnv1a:
        movl $0x811c9dc5, %eax
1:      testq %rcx, %rcx
        jz 2f
        xorb (%rsi), %al
        imull $0x01000193, %eax
        incq %rsi
        decq %rcx
        jmp 1b
2:      ret

/* puthex32: eax as 8 hex digits. */
puthex32:
        pushq %rcx
        pushq %rdx
        movl %eax, %edx
        movl $8, %ecx
1:      roll $4, %edx
        movl %edx, %eax
        andl $15, %eax
        addb $'0', %al
        cmpb $'9', %al
        jbe 2f
        addb $'a' - '9' - 1, %al
2:      call putc
        loop 1b
        popq %rdx
        popq %rcx
        ret

/* put_status: "<label>STATUS=<eax>", label at rsi. */
put_status:
        pushq %rax
        call puts
        leaq msg_status(%rip), %rsi
        call puts
        popq %rax
        jmp putdec

/* blk_command: runs the blk word in linebuf; CF set if it was one. */
blk_command:
        leaq linebuf(%rip), %rsi
        leaq w_blkread(%rip), %rdi
        call prefix
        jc .Lblkread
        leaq linebuf(%rip), %rsi
        leaq w_blkwrite(%rip), %rdi
        call prefix
        jc .Lblkwrite
        leaq linebuf(%rip), %rsi
        leaq w_blkflush(%rip), %rdi
        call prefix
        jc .Lblkflush
        leaq linebuf(%rip), %rsi
        leaq w_blkid(%rip), %rdi
        call prefix
        jc .Lblkid
        leaq linebuf(%rip), %rsi
        leaq w_blkbad(%rip), %rdi
        call prefix
        jc .Lblkbad
        leaq linebuf(%rip), %rsi
        leaq w_blkbench(%rip), %rdi
        call prefix
        jc .Lblkbench
        leaq linebuf(%rip), %rsi
        leaq w_irqs(%rip), %rdi
        call prefix
        jc msix_irqs_command            /* the MSI-X block */
        clc
        ret
.Lnodisk:
        leaq msg_nodisk(%rip), %rsi
        call puts
        stc
        ret
.Lblkread:
        call blk_disk
        jc .Lnodisk
        call skipsp
        call parsedec
        movq %rax, %rdx
        xorl %eax, %eax                 /* VIRTIO_BLK_T_IN */
        leaq blk_data(%rip), %rsi
        movl $512, %ecx
        movl $2, %r8d
        call blk_req
        leaq msg_blkread(%rip), %rsi
        call put_status
        leaq msg_sum(%rip), %rsi
        call puts
        leaq blk_data(%rip), %rsi
        movq $512, %rcx
        call fnv1a
        call puthex32
        call newline
        stc
        ret
.Lblkwrite:
        call blk_disk
        jc .Lnodisk
        call skipsp
        call parsedec
        pushq %rax                      /* sector */
        call skipsp
        call parsedec
        leaq blk_data(%rip), %rdi
        movq $512, %rcx
        rep stosb
        popq %rdx
        movl $1, %eax                   /* VIRTIO_BLK_T_OUT */
        leaq blk_data(%rip), %rsi
        movl $512, %ecx
        xorl %r8d, %r8d
        call blk_req
        leaq msg_blkwrite(%rip), %rsi
        call put_status
        call newline
        stc
        ret
.Lblkflush:
        call blk_disk
        jc .Lnodisk
        movl $4, %eax                   /* VIRTIO_BLK_T_FLUSH */
        xorl %edx, %edx
        xorl %ecx, %ecx
        call blk_req
        leaq msg_blkflush(%rip), %rsi
        call put_status
        call newline
        stc
        ret
.Lblkid:
        call blk_disk
        jc .Lnodisk
        leaq blk_data(%rip), %rdi
        xorl %eax, %eax
        movq $32, %rcx
        rep stosb
        movl $8, %eax                   /* VIRTIO_BLK_T_GET_ID */
        xorl %edx, %edx
        leaq blk_data(%rip), %rsi
        movl $20, %ecx
        movl $2, %r8d
        call blk_req
        leaq msg_blkid(%rip), %rsi
        call put_status
        leaq msg_serial(%rip), %rsi
        call puts
        leaq blk_data(%rip), %rsi       /* NUL-terminated: 32 zeroed, 20 used */
        call puts
        call newline
        stc
        ret
.Lblkbad:
        call blk_disk
        jc .Lnodisk
        xorl %eax, %eax
        xorl %edx, %edx
        movl $BAD_ADDR, %esi
        movl $512, %ecx
        movl $2, %r8d
        call blk_req
        leaq msg_blkbad(%rip), %rsi
        call put_status
        call newline
        stc
        ret
.Lblkbench:
        call blk_disk
        jc .Lnodisk
        call skipsp
        call parsedec
        pushq %r12
        pushq %r13
        pushq %r14
        pushq %r15
        movq %rax, %r12                 /* r12: N */
        xorl %r13d, %r13d               /* r13: errors */
        rdtsc
        shlq $32, %rdx
        orq %rax, %rdx
        movq %rdx, %r14                 /* r14: start */
        movq D_CAP(%rbx), %r15
        shrq $3, %r15
        decq %r15                       /* r15: 4 KiB blocks to choose from */
        jg 1f
        movl $1, %r15d                  /* a disk under 8 KiB: block 0 only */
1:
        xorl %eax, %eax                 /* reads first, then writes */
        call blk_bench_pass
        movl $1, %eax
        call blk_bench_pass
        rdtsc
        shlq $32, %rdx
        orq %rax, %rdx
        subq %r14, %rdx
        pushq %rdx
        leaq msg_bench(%rip), %rsi
        call puts
        movq %r12, %rax
        call putdec
        leaq msg_errors(%rip), %rsi
        call puts
        movq %r13, %rax
        call putdec
        leaq msg_cycles(%rip), %rsi
        call puts
        popq %rax
        call putdec
        call newline
        popq %r15
        popq %r14
        popq %r13
        popq %r12
        stc
        ret

/* blk_bench_pass: r12 requests of type eax (0 read, 1 write) of 4 KiB at
   random 4 KiB blocks below r15; counts errors in r13. */
blk_bench_pass:
        pushq %rbp
        movl %eax, %ebp
        movq %r12, %rcx
1:      testq %rcx, %rcx
        jz 3f
        pushq %rcx
        movq blk_seed(%rip), %rax
        movabsq $6364136223846793005, %rdx
        imulq %rdx, %rax
        movabsq $1442695040888963407, %rdx
        addq %rdx, %rax
        movq %rax, blk_seed(%rip)
        shrq $33, %rax
        xorl %edx, %edx
        divq %r15
        leaq (,%rdx,8), %rdx            /* sector of the block */
        movl %ebp, %eax
        movl %ebp, %r8d
        xorl $1, %r8d
        shll $1, %r8d                   /* reads: device writes the data */
        leaq blk_data(%rip), %rsi
        movl $4096, %ecx
        call blk_req
        testl %eax, %eax
        jz 2f
        incq %r13
2:      popq %rcx
        decq %rcx
        jmp 1b
3:      popq %rbp
        ret
/* ================= end of virtio-blk ===================================== */

/* ---------------- virtio-blk MSI-X (issue 15) ----------------
 * Unless "nomsix" is on the command line, each virtio-blk disk with an
 * MSI-X capability gets table entry 0 programmed to the boot CPU's local
 * APIC (address 0xFEE00000, destination 0) with data MSIX_VECTOR, MSI-X
 * enabled, its queue 0 mapped to vector 0 and no configuration vector.
 * The local APIC is software-enabled (xAPIC MMIO or x2APIC MSRs, as the
 * boot left it) and MSIX_VECTOR's handler counts and EOIs. Requests are
 * still polled; the count shows completions arriving as MSI-X messages.
 * At boot, after each BLK line: "BLK vd<x> MSIX=on|off". Shell word:
 *   irqs              IRQS=<MSI-X interrupts taken so far>
 */
        .set MSIX_VECTOR, 0x40
        .set LAPIC_MMIO, 0xfee00000

/* msix_cmdline: msix_off = 1 if the command line (r12) has "nomsix". */
msix_cmdline:
        pushq %rbx
        movq %r12, %rbx
        testq %rbx, %rbx
        jz 2f
1:      cmpb $0, (%rbx)
        je 2f
        movq %rbx, %rsi
        leaq w_nomsix(%rip), %rdi
        call prefix
        jnc 3f
        movb $1, msix_off(%rip)
        jmp 2f
3:      incq %rbx
        jmp 1b
2:      popq %rbx
        ret

/* blk_msix_setup: disk entry rbx in slot r12d, common cfg at rdi (kept). */
blk_msix_setup:
        pushq %rdi
        pushq %rsi
        pushq %rax
        pushq %rcx
        pushq %rdx
        pushq %r8
        pushq %r9
        cmpb $0, msix_off(%rip)
        jne .Lmsix_out
        movl D_MSIX(%rbx), %r8d         /* r8: the capability */
        testl %r8d, %r8d
        jz .Lmsix_out
        movq %rdi, %r9                  /* r9: common cfg */
        movl %r12d, %edi
        leal 4(%r8), %esi
        call pci_read32                 /* table offset | BIR */
        movl %eax, %edx
        andl $-8, %edx                  /* rdx: table offset */
        andl $7, %eax
        leal 0x10(,%rax,4), %esi
        call pci_read32
        movl %eax, %ecx
        andl $-16, %ecx                 /* rcx: the BAR */
        testb $4, %al
        jz 1f
        addl $4, %esi
        call pci_read32
        shlq $32, %rax
        orq %rax, %rcx
1:      addq %rcx, %rdx                 /* rdx: table entry 0 */
        movl $LAPIC_MMIO, (%rdx)        /* address: local APIC 0 */
        movl $0, 4(%rdx)
        movl $MSIX_VECTOR, 8(%rdx)      /* data: fixed, edge, the vector */
        movl $0, 12(%rdx)               /* unmasked */
        movl %r8d, %esi
        call pci_read32
        orl $0x80000000, %eax           /* message control: enable */
        andl $0xbfffffff, %eax          /* and no function mask */
        movl %eax, %ecx
        call pci_write32
        movw $0xffff, 0x10(%r9)         /* config_msix_vector: none */
        movw $0, 0x16(%r9)
        movw $0, 0x1a(%r9)              /* queue 0: vector 0 */
        cmpw $0, 0x1a(%r9)              /* reads back NO_VECTOR if refused */
        jne .Lmsix_out
        movb $1, D_MSIXON(%rbx)
        call lapic_on
.Lmsix_out:
        popq %r9
        popq %r8
        popq %rdx
        popq %rcx
        popq %rax
        popq %rsi
        popq %rdi
        ret

/* lapic_on: once, the MSI-X gate in the IDT and the local APIC enabled. */
lapic_on:
        cmpb $0, lapic_ready(%rip)
        jne 1f
        movb $1, lapic_ready(%rip)
        leaq idt+MSIX_VECTOR*16(%rip), %rdi
        leaq isr_msix(%rip), %rax
        call set_gate
        movl $0x1b, %ecx                /* IA32_APIC_BASE: x2APIC on? */
        rdmsr
        btl $10, %eax
        setc lapic_x2(%rip)
        movl $0xf0, %ecx                /* spurious vector register */
        call lapic_read
        orl $0x1ff, %eax                /* enabled, spurious vector 0xff */
        call lapic_write
1:      ret

/* lapic_read: eax = local APIC register ecx (xAPIC offset). */
lapic_read:
        cmpb $0, lapic_x2(%rip)
        jne 1f
        movl $LAPIC_MMIO, %eax
        movl (%rax,%rcx), %eax
        ret
1:      pushq %rcx
        pushq %rdx
        shrl $4, %ecx
        addl $0x800, %ecx
        rdmsr
        popq %rdx
        popq %rcx
        ret

/* lapic_write: local APIC register ecx (xAPIC offset) = eax. */
lapic_write:
        pushq %rcx
        pushq %rdx
        cmpb $0, lapic_x2(%rip)
        jne 1f
        movl $LAPIC_MMIO, %edx
        movl %eax, (%rdx,%rcx)
        jmp 2f
1:      shrl $4, %ecx
        addl $0x800, %ecx
        xorl %edx, %edx
        wrmsr
2:      popq %rdx
        popq %rcx
        ret

isr_msix:
        pushq %rax
        pushq %rcx
        lock incl msix_irqs(%rip)
        movl $0xb0, %ecx                /* EOI */
        xorl %eax, %eax
        call lapic_write
        popq %rcx
        popq %rax
        iretq

/* blk_msix_line: "BLK vd<x> MSIX=on|off" for disk rbx (blk_count's letter). */
blk_msix_line:
        leaq msg_blk(%rip), %rsi
        call puts
        movl blk_count(%rip), %eax
        addb $'a', %al
        call putc
        leaq msg_msix_on(%rip), %rsi
        cmpb $0, D_MSIXON(%rbx)
        jne 1f
        leaq msg_msix_off(%rip), %rsi
1:      call puts
        ret

/* irqs: IRQS=<count>; ends a blk_command (CF set). */
msix_irqs_command:
        leaq msg_irqs(%rip), %rsi
        call puts
        movl msix_irqs(%rip), %eax
        call putdec
        call newline
        stc
        ret

w_nomsix:     .asciz "nomsix"
w_irqs:       .asciz "irqs"
msg_msix_on:  .asciz " MSIX=on\r\n"
msg_msix_off: .asciz " MSIX=off\r\n"
msg_irqs:     .asciz "IRQS="
/* ---------------- end of the virtio-blk MSI-X block ---------------- */

/* The AP trampoline, copied to TRAMPOLINE: real mode to long mode with
   the BSP's page tables, count in, then halt for good. */
        .code16
trampoline:
        cli
        xorw %ax, %ax
        movw %ax, %ds
        lgdtl TRAMPOLINE + (tramp_gdt - trampoline)
        movl %cr0, %eax
        orl $1, %eax
        movl %eax, %cr0
        ljmpl $0x18, $(TRAMPOLINE + (tramp32 - trampoline))
        .code32
tramp32:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movl %cr4, %eax
        orl $0x20, %eax
        movl %eax, %cr4
        movl TRAMPOLINE + (tramp_cr3 - trampoline), %eax
        movl %eax, %cr3
        movl $0xc0000080, %ecx
        rdmsr
        orl $0x100, %eax
        wrmsr
        movl %cr0, %eax
        orl $0x80000000, %eax
        movl %eax, %cr0
        ljmp $0x08, $(TRAMPOLINE + (tramp64 - trampoline))
        .code64
tramp64:
        movq $ap_count, %rax
        lock incl (%rax)
43:     cli
        hlt
        jmp 43b
tramp_gdt:
        .word gdt_end - gdt - 1
        .long gdt
tramp_cr3:
        .long 0
trampoline_end:

        .section .rodata, "a"
        .align 16
gdt:    .quad 0
        .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
        .quad 0x00cf92000000ffff        /* 0x10: data */
        .quad 0x00cf9a000000ffff        /* 0x18: 32-bit code, for the AP trampoline */
gdt_end:
gdt_desc:
        .word gdt_end - gdt - 1
        .quad gdt
msg_ready:   .asciz "GUEST-READY\r\n"
msg_cpus:    .asciz "CPUS="
msg_mem:     .asciz "MEM="
msg_cmdline: .asciz "CMDLINE="
msg_acpi:    .asciz "ACPI="
msg_initrd:  .asciz "INITRD="
msg_prompt:  .asciz "> "
msg_spun:    .asciz "SPUN\r\n"
msg_unknown: .asciz "unknown command\r\n"
w_echo:      .asciz "echo "
w_poweroff:  .asciz "poweroff"
w_reboot:    .asciz "reboot"
w_resetatboot: .asciz "resetatboot"
msg_resetting: .asciz "RESETTING\r\n"
w_panic:     .asciz "panic"
w_spin:      .asciz "spin "
w_mmio:      .asciz "mmio"
w_fault:     .asciz "fault"
msg_mmio_ones:  .asciz "MMIO=ones\r\n"
msg_mmio_other: .asciz "MMIO=other\r\n"
/* virtio-blk section's strings */
msg_blk:     .asciz "BLK vd"
msg_sectors: .asciz " SECTORS="
msg_status:  .asciz "STATUS="
msg_sum:     .asciz " SUM="
msg_serial:  .asciz " SERIAL="
msg_nodisk:  .asciz "BLK NODISK\r\n"
msg_blkread: .asciz "BLKREAD "
msg_blkwrite: .asciz "BLKWRITE "
msg_blkflush: .asciz "BLKFLUSH "
msg_blkid:   .asciz "BLKID "
msg_blkbad:  .asciz "BLKBAD "
msg_bench:   .asciz "BLKBENCH N="
msg_errors:  .asciz " ERRORS="
msg_cycles:  .asciz " CYCLES="
w_blkread:   .asciz "blkread "
w_blkwrite:  .asciz "blkwrite "
w_blkflush:  .asciz "blkflush "
w_blkid:     .asciz "blkid "
w_blkbad:    .asciz "blkbad "
w_blkbench:  .asciz "blkbench "
/* end of the virtio-blk section's strings */
idt_desc:
        .word 256 * 16 - 1
        .quad idt
null_idt:
        .word 0
        .quad 0

        .section .note.pvh, "a"
        .align 4
        .long 4                         /* name size: "Xen\0" */
        .long 4                         /* descriptor size */
        .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .long pvh_start

        .section .bss, "aw", @nobits
        .align 4096
pml4:   .fill 4096, 1, 0
pdpt:   .fill 4096, 1, 0
pd:     .fill 4096, 1, 0
idt:    .fill 4096, 1, 0
linebuf: .fill 128, 1, 0
numbuf: .fill 32, 1, 0
        .align 4
ap_count: .long 0
        .align 8
initrd_size: .quad 0
/* virtio-blk section's data */
        .align 4096
pd_hole:    .fill 4096, 1, 0
blk_data:   .fill 4096, 1, 0
blk_queues: .fill 4096 * MAX_BLK, 1, 0
blk_table:  .fill BLK_STRIDE * MAX_BLK, 1, 0
blk_hdr:    .fill 16, 1, 0
blk_seed:   .quad 0
blk_count:  .long 0
blk_status: .byte 0
/* end of the virtio-blk section's data */
/* the MSI-X block's data */
msix_irqs:   .long 0
msix_off:    .byte 0
lapic_ready: .byte 0
lapic_x2:    .byte 0
/* end of the MSI-X block's data */

