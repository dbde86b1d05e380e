/*
 * The project's test guest: a few hundred instructions that boot through the
 * Linux x86-64 boot protocol (bzImage, 64-bit entry) or through PVH (ELF
 * note, 32-bit entry), report what they were given on COM1, and then serve a
 * line shell on the serial console. It idles in `hlt` with interrupts on:
 * under an emulating KVM a polling loop would burn a host core. (With a
 * NIC it also wakes for the NICs' interrupts and a 100 Hz PIT tick.)
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
 *               | balloon, balloonbad (see the virtio-balloon block)
 *               | udpsend A.B.C.D PORT TEXT (UDP SENT | UDP NOARP)
 *               | udprr A.B.C.D PORT N (UDPRR N=<n> ERRORS=<e> CYCLES=<TSC>)
 *               | netstat (NETSTAT eth<n> RX=<frames> TX=<frames> DROP=<n>)
 *               | netbad (a malformed TX chain: NETBAD SENT)
 *                 (virtio-net: see that block; without a NIC: NET none)
 * NICs:         after the BLK lines, one line per virtio-net NIC:
 *               NET eth<n> MAC=<aa:bb:..> IP=<a.b.c.d>|none (ip= or DHCP);
 *               at the prompt it answers ARP, ICMP echo and UDP to port 7.
 *               No NIC: no NET line, and it idles exactly as before.
 * Command line: "resetatboot" makes it print RESETTING after CMDLINE= and
 *               reset at once (i8042 0xFE), on every boot. "ip=A.B.C.D/NN"
 *               is eth0's static address (no DHCP on eth0).
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
        movq %r12, %rdi
        call net_init                   /* NET lines: see the virtio-net block */
        call serial_init_irq
        call net_irq_setup
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
        call rtc_command                /* the rtc words, if it is one */
        jc shell
        leaq msg_unknown(%rip), %rsi
        call puts
        jmp shell

/* ---------------- rtc: the CMOS clock (MC146818 at 0x70/0x71) ----------------
 * rtc:                   waits out an update in progress (register A's UIP),
 *                        reads the clock in BCD (as firmware leaves it) and
 *                        prints RTC=YYYY-MM-DD hh:mm:ss
 * rtcset YYYYMMDDhhmmss: writes that time with register B's SET bit held
 *                        (the clock stops while written, runs on from the
 *                        new time once SET clears), then prints it as `rtc`;
 *                        RTC bad on anything but 14 digits.
 * rtcirq:                enables the update-ended interrupt (IRQ 8, vector
 *                        0x28 through the slave PIC), idles in hlt until
 *                        three have arrived (each acknowledged by reading
 *                        register C), turns it off and prints RTCIRQ=3.
 * rtc_command: CF set if the line was one of these (done), clear if not.
 */
        .set RTC_INDEX, 0x70
        .set RTC_DATA, 0x71
        .set RTC_REG_A, 0x0a
        .set RTC_REG_B, 0x0b
rtc_command:
        leaq linebuf(%rip), %rsi
        leaq w_rtcset(%rip), %rdi
        call prefix
        jc 1f
        leaq linebuf(%rip), %rsi
        leaq w_rtcirq(%rip), %rdi
        call prefix
        jc rtc_irq_cmd
        leaq linebuf(%rip), %rsi
        leaq w_rtc(%rip), %rdi
        call prefix
        jc rtc_show
        clc
        ret
1:      call skipsp
        leaq rtc_bcd(%rip), %rdi
        movl $7, %ecx
2:      movzbl (%rsi), %eax             /* two digits to one BCD byte */
        subb $'0', %al
        cmpb $9, %al
        ja rtc_bad
        movzbl 1(%rsi), %edx
        subb $'0', %dl
        cmpb $9, %dl
        ja rtc_bad
        shlb $4, %al
        orb %dl, %al
        movb %al, (%rdi)
        addq $2, %rsi
        incq %rdi
        decl %ecx
        jnz 2b
        movb $RTC_REG_B, %al
        outb %al, $RTC_INDEX
        inb $RTC_DATA, %al
        orb $0x80, %al                  /* SET */
        outb %al, $RTC_DATA
        leaq rtc_regs(%rip), %rdi
        leaq rtc_bcd(%rip), %rsi
        movl $7, %ecx
3:      movb (%rdi), %al
        outb %al, $RTC_INDEX
        movb (%rsi), %al
        outb %al, $RTC_DATA
        incq %rdi
        incq %rsi
        decl %ecx
        jnz 3b
        movb $RTC_REG_B, %al
        outb %al, $RTC_INDEX
        inb $RTC_DATA, %al
        andb $0x7f, %al                 /* SET clear: the new time runs */
        outb %al, $RTC_DATA
rtc_show:
4:      movb $RTC_REG_A, %al
        outb %al, $RTC_INDEX
        inb $RTC_DATA, %al
        testb $0x80, %al                /* UIP: an update is about to happen */
        jnz 4b
        leaq msg_rtc(%rip), %rsi
        call puts
        leaq rtc_regs(%rip), %rdi
        leaq rtc_seps(%rip), %rsi
        movl $7, %ecx
5:      movb (%rdi), %al
        outb %al, $RTC_INDEX
        inb $RTC_DATA, %al
        movb %al, %dl
        shrb $4, %al
        andl $15, %eax
        call puthexdigit                /* a BCD byte prints as its two hex digits */
        movb %dl, %al
        andl $15, %eax
        call puthexdigit
        movb (%rsi), %al
        testb %al, %al
        jz 6f
        call putc
6:      incq %rdi
        incq %rsi
        decl %ecx
        jnz 5b
        call newline
        stc
        ret
rtc_bad:
        leaq msg_rtc_bad(%rip), %rsi
        call puts
        call newline
        stc
        ret
rtc_irq_cmd:
        leaq idt+0x28*16(%rip), %rdi
        leaq rtc_isr(%rip), %rax
        call set_gate
        movl $0, rtc_irqs(%rip)
        inb $0xa1, %al
        andb $0xfe, %al                 /* slave IRQ 0: IRQ 8 */
        outb %al, $0xa1
        inb $0x21, %al
        andb $0xfb, %al                 /* master IRQ 2: the cascade */
        outb %al, $0x21
        movb $RTC_REG_B, %al
        outb %al, $RTC_INDEX
        inb $RTC_DATA, %al
        orb $0x10, %al                  /* UIE */
        outb %al, $RTC_DATA
7:      cmpl $3, rtc_irqs(%rip)
        jae 8f
        hlt
        jmp 7b
8:      movb $RTC_REG_B, %al
        outb %al, $RTC_INDEX
        inb $RTC_DATA, %al
        andb $0xef, %al                 /* UIE off */
        outb %al, $RTC_DATA
        inb $0xa1, %al
        orb $0x01, %al
        outb %al, $0xa1
        leaq msg_rtcirq(%rip), %rsi
        call puts
        movl rtc_irqs(%rip), %eax
        call putdec
        call newline
        stc
        ret
rtc_isr:
        pushq %rax
        movb $0x0c, %al                 /* register C: reading acknowledges */
        outb %al, $RTC_INDEX
        inb $RTC_DATA, %al
        incl rtc_irqs(%rip)
        movb $0x20, %al
        outb %al, $0xa0
        outb %al, $0x20
        popq %rax
        iretq

        .pushsection .rodata, "a"
w_rtcset:    .asciz "rtcset"
w_rtcirq:    .asciz "rtcirq"
msg_rtcirq:  .asciz "RTCIRQ="
w_rtc:       .asciz "rtc"
msg_rtc:     .asciz "RTC="
msg_rtc_bad: .asciz "RTC bad"
/* century, year, month, day, hours, minutes, seconds; what follows each */
rtc_regs:    .byte 0x32, 0x09, 0x08, 0x07, 0x04, 0x02, 0x00
rtc_seps:    .byte 0, '-', '-', ' ', ':', ':', 0
        .popsection
        .pushsection .bss, "aw", @nobits
rtc_bcd:     .fill 8, 1, 0
rtc_irqs:    .long 0
        .popsection
/* ---------------- end of the rtc block ---------------- */

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
        jmp net_commands                /* the virtio-net block, below */

/* bln_init: finds and sets up the balloon once; CF set if there is none. */
bln_init:
        cmpl $0, bln_ready(%rip)
        jne 90f
        movl $1, %edi                   /* slot 0 is the host bridge */
        movl $0x10451af4, %edx
        call pci_find
        jc 91f
        movl %edi, %r12d
        call bln_probe
        cmpl $0, bln_ready(%rip)
        jne 90f
91:     stc
        ret
90:     clc
        ret

/* bln_probe: sets up the virtio-balloon function in slot r12d. */
bln_probe:
        pushq %rbx
        leaq bln_dev(%rip), %rbx
        movl %r12d, %edi
        call vpci_caps
        jc 98f
        movl $2, %eax                   /* STATS_VQ, if offered */
        call vpci_start
        jc 98f
        movl %eax, bln_stats(%rip)
        shrl $1, %eax
        addl $2, %eax
        movl %eax, bln_nq(%rip)
        xorl %ecx, %ecx                 /* queues 0 (inflate), 1 (deflate), 2 (stats) */
95:     movl %ecx, %eax
        shll $12, %eax
        leaq bln_queues(%rip), %rdx
        addq %rdx, %rax                 /* rax: the queue's page */
        call vpci_queue
        leaq bln_qnotify(%rip), %rdx
        movq %rax, (%rdx,%rcx,8)
        incl %ecx
        cmpl bln_nq(%rip), %ecx
        jb 95b
        movq bln_dev+V_COMMON(%rip), %rdi
        movb $0x0f, 0x14(%rdi)          /* DRIVER_OK */
        movl $1, bln_ready(%rip)
        cmpl $0, bln_stats(%rip)
        je 98f
        call bln_stats_post
98:     popq %rbx
        ret

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
        pushq %r8
        leaq bln_avail(%rip), %r8
        leaq (%r8,%rbx,2), %r8
        xorl %edx, %edx                 /* head 0 */
        call vq_push
        movl %eax, %ecx
        popq %r8
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
        movq bln_dev+V_DEVCFG(%rip), %rsi
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
        movq bln_dev+V_DEVCFG(%rip), %rsi
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
bln_dev:     .fill 48, 1, 0           /* its transport record (V_SIZE) */
bln_qnotify: .quad 0, 0, 0
bln_mem:     .quad 0
bln_sbuf:    .fill 20, 1, 0
bln_ready:   .long 0
bln_pages:   .long 0
bln_avail:   .word 0, 0, 0
bln_stats:   .long 0
bln_nq:      .long 0
        .popsection
/* ---------------- end of the virtio-balloon block ---------------- */

/* ---------------- virtio-net and a tiny IPv4 stack (issue 16) ----------
 * At boot (after the BLK lines) each virtio-net function (1af4:1041, or
 * a transitional 1af4:1000 through its modern interface) in PCI order
 * becomes ethN: VERSION_1, MAC, STATUS and EVENT_IDX (when offered), one
 * RX queue (queue 0, VQ_SIZE buffers of 2 KiB posted) and one TX queue
 * (queue 1); every frame carries the 12-byte virtio_net_hdr_v1, zeroed.
 * With EVENT_IDX a queue is notified only when the device asked for it
 * (avail_event: it waits at the index before the new chain), TX
 * completions are polled with no interrupt asked for (used_event stays
 * 0), and an RX interrupt is asked for (used_event = the next used entry,
 * then one more look at used.idx) only before the shell sleeps.
 * Its address is `ip=A.B.C.D/NN` from the command line for eth0, else
 * DHCP (DISCOVER/OFFER/REQUEST/ACK, by the TSC: six DISCOVERs waiting
 * 2, 4, ... 64 WAIT_TSC, as a bridge with STP forwards a new port only
 * after its forward delay (at least 2 s each for listening and learning)
 * and dnsmasq then pings an address for up to 3 s before it offers it, so
 * about 20 s without a server; then up to six REQUESTs, as long, since
 * dnsmasq answers none while it pings addresses for other clients);
 * then it prints
 *     NET eth<n> MAC=<aa:bb:cc:dd:ee:ff> IP=<a.b.c.d>|none
 * Without a NIC nothing is printed and nothing changes. While the shell
 * waits for input it answers, on every NIC: ARP requests for its address,
 * ICMP echo requests, and UDP datagrams to port 7 (echoed to the sender);
 * it learns the last peer's MAC from ARP and IPv4 frames sent to it. The
 * RX side takes the functions' INTx interrupts (legacy line from PCI
 * config 0x3c; every virtio ISR status is read, which clears it, before
 * the rings are, so edge and level lines both wake it) to leave `hlt`,
 * with the PIT at 100 Hz as a backstop; without a usable line it polls.
 * Every length and option read from a frame is bounded: a frame too short
 * for its headers, an IPv4 header with options or a length past the
 * frame, a fragment, a UDP length past the packet, is dropped and counted
 * (DROP= in netstat); DHCP options are walked inside the datagram only.
 * Shell words (to the NIC whose subnet holds A.B.C.D, else eth0; UDP from
 * port 40000; the next hop, or the gateway DHCP gave, resolved by ARP):
 *   udpsend A.B.C.D PORT TEXT  one datagram: UDP SENT | UDP NOARP
 *   udprr A.B.C.D PORT N       N round trips against an echo server, each
 *                              waiting up to ~1/3 s for the answer:
 *                              UDPRR N=<n> ERRORS=<lost> CYCLES=<TSC cycles>
 *   udpburst A.B.C.D PORT N    N datagrams (8 bytes each) back to back,
 *                              each waiting for the device to use it:
 *                              UDPBURST N=<n> CYCLES=<TSC cycles>
 *   ping A.B.C.D [N]           N ICMP echo requests (1 if not given, at
 *                              most 100), each waiting up to ~1/3 s for
 *                              its reply: PING SENT=<n> RECEIVED=<m> |
 *                              PING NOARP
 *   netstat                    NETSTAT eth<n> RX=<frames> TX=<frames>
 *                              DROP=<frames dropped as malformed>
 *   netbad                     a TX chain whose header descriptor has 6
 *                              bytes (not 12) and whose frame lies at
 *                              1 TiB, beyond RAM: NETBAD SENT
 * Without a NIC these print NET none.
 */
        .set NET_ID, 0x10411af4
        .set NET_ID_TRANSITIONAL, 0x10001af4    /* QEMU's default: driven as modern */
        .set MAX_NET, 4
        .set NET_MEM, 0x8000            /* per NIC: RX, TX queue pages, TX buffer, RX buffers */
        .set NM_TXQ, 0x1000
        .set NM_TXBUF, 0x2000
        .set NM_RXBUF, 0x4000           /* VQ_SIZE buffers of RXBUF_LEN */
        .set RXBUF_LEN, 2048
        .set VNET_HDR, 12
        .set N_RXQ, V_SIZE              /* the RX queue's page (and the NIC's memory) */
        .set N_RXNOT, V_SIZE + 8
        .set N_TXNOT, V_SIZE + 16
        .set N_RXAV, V_SIZE + 24        /* 16-bit available indexes, last used seen */
        .set N_RXLAST, V_SIZE + 26
        .set N_TXAV, V_SIZE + 28
        .set N_EVIDX, V_SIZE + 30       /* EVENT_IDX negotiated (byte) */
        .set NQ_USED_EVENT, 0x114       /* in a queue page: after avail.ring[VQ_SIZE] */
        .set NQ_AVAIL_EVENT, 0x244      /* after used.ring[VQ_SIZE] */
        .set N_MAC, V_SIZE + 32         /* 6 bytes */
        .set N_IP, V_SIZE + 40          /* addresses in network byte order */
        .set N_MASK, V_SIZE + 44
        .set N_GW, V_SIZE + 48
        .set N_PEERIP, V_SIZE + 52
        .set N_PEERMAC, V_SIZE + 56     /* 6 bytes */
        .set N_RX, V_SIZE + 64
        .set N_TX, V_SIZE + 72
        .set N_DROP, V_SIZE + 80
        .set N_BATCH, V_SIZE + 88       /* net_rx calls that found frames */
        .set N_STRIDE, 256
        .set UDP_LPORT, 40000
        .set PING_ID, 0x564c            /* "LV": our echo requests' identifier */
        .set PING_DATA, 32              /* payload bytes of an echo request */
        .set PING_MAX, 100
        .set WAIT_TSC, 0x18000000       /* ~0.16 s at 2.5 GHz */
        .set BIG_ADDR, 0x10000000000    /* 1 TiB: beyond any test guest's RAM */
        .set PIT_DIVISOR, 11932         /* 1193182 Hz / 100 */

/* net_rec: rbx = the record of NIC eax. */
net_rec:
        imull $N_STRIDE, %eax, %eax
        leaq net_table(%rip), %rbx
        addq %rax, %rbx
        ret

/* tsc: rax = the time stamp counter. */
tsc:
        pushq %rdx
        rdtsc
        shlq $32, %rdx
        orq %rdx, %rax
        popq %rdx
        ret

/* net_init: finds and sets up every NIC; rdi = the command line (or 0). */
net_init:
        pushq %rbx
        pushq %r12
        movq %rdi, net_cmdline(%rip)
        movl $1, %r12d                  /* slot 0 is the host bridge */
1:      movl %r12d, %edi
        cmpl $32, %edi
        jae 2f
        xorl %esi, %esi
        call pci_read32
        incl %r12d
        cmpl $NET_ID, %eax
        je 3f
        cmpl $NET_ID_TRANSITIONAL, %eax
        jne 1b
3:      decl %r12d
        cmpl $MAX_NET, net_count(%rip)
        jae 2f
        call net_probe
        incl %r12d
        jmp 1b
2:      popq %r12
        popq %rbx
        ret

/* net_probe: sets up the virtio-net function in slot r12d as the next ethN,
   finds its address and prints its NET line. */
net_probe:
        movl net_count(%rip), %eax
        call net_rec
        movl %r12d, %edi
        call vpci_caps
        jc 9f
        movl $0x20010020, %eax          /* EVENT_IDX (29), STATUS (16), MAC (5) */
        call vpci_start
        jc 9f
        movl %eax, %r8d
        testl $0x20000000, %eax
        setnz N_EVIDX(%rbx)
        /* The MAC: the device's, or 52:54:00:12:34:(56+n) without one. */
        movl $0x12005452, N_MAC(%rbx)
        movl net_count(%rip), %eax
        shll $8, %eax
        addl $0x5634, %eax
        movw %ax, N_MAC+4(%rbx)
        testl $0x20, %r8d
        jz 1f
        movq V_DEVCFG(%rbx), %rsi
        movl (%rsi), %eax
        movl %eax, N_MAC(%rbx)
        movzwl 4(%rsi), %eax
        movw %ax, N_MAC+4(%rbx)
1:      movl net_count(%rip), %eax
        imull $NET_MEM, %eax, %eax
        leaq net_mem(%rip), %rdx
        addq %rdx, %rax
        movq %rax, N_RXQ(%rbx)
        xorl %ecx, %ecx
        call vpci_queue                 /* 0: receive */
        movq %rax, N_RXNOT(%rbx)
        movq N_RXQ(%rbx), %rax
        addq $NM_TXQ, %rax
        movl $1, %ecx
        call vpci_queue                 /* 1: transmit */
        movq %rax, N_TXNOT(%rbx)
        movq V_COMMON(%rbx), %rdi
        movb $0x0f, 0x14(%rdi)          /* DRIVER_OK */
        /* Every RX buffer posted: descriptor i -> buffer i. */
        xorl %edx, %edx
2:      call net_rx_desc
        call net_rx_post
        incl %edx
        cmpl $VQ_SIZE, %edx
        jb 2b
        call net_rx_publish
        incl net_count(%rip)
        /* Its address: ip= (eth0 only), else DHCP. */
        cmpl $1, net_count(%rip)        /* eth0? */
        jne 3f
        call net_static
        jnc 4f
3:      call dhcp
4:      leaq msg_net(%rip), %rsi
        call puts
        movl net_count(%rip), %eax
        decl %eax
        call putdec
        leaq msg_mac(%rip), %rsi
        call puts
        leaq N_MAC(%rbx), %rsi
        call putmac
        leaq msg_ipeq(%rip), %rsi
        call puts
        movl N_IP(%rbx), %eax
        testl %eax, %eax
        jnz 5f
        leaq msg_none(%rip), %rsi
        call puts
        jmp 6f
5:      call putip
6:      call newline
9:      ret

/* net_rx_desc: descriptor edx of NIC rbx's RX queue -> RX buffer edx
   (written once: the device never changes a descriptor). */
net_rx_desc:
        pushq %rcx
        movq N_RXQ(%rbx), %rdi
        movl %edx, %eax
        shll $11, %eax                  /* RXBUF_LEN */
        leaq NM_RXBUF(%rdi,%rax), %rax
        movl %edx, %ecx
        shll $4, %ecx
        movq %rax, (%rdi,%rcx)          /* addr */
        movl $RXBUF_LEN, 8(%rdi,%rcx)
        movw $2, 12(%rdi,%rcx)          /* device-writable */
        movw $0, 14(%rdi,%rcx)
        popq %rcx
        ret

/* net_rx_post: (re)posts RX buffer edx of NIC rbx in its available ring,
   not yet published (net_rx_publish). Clobbers rax, rdi. */
net_rx_post:
        pushq %rcx
        movq N_RXQ(%rbx), %rdi
        movzwl N_RXAV(%rbx), %eax
        movl %eax, %ecx
        andl $VQ_SIZE - 1, %ecx
        movw %dx, 0x104(%rdi,%rcx,2)    /* avail.ring[idx] = descriptor edx */
        incl %eax
        movw %ax, N_RXAV(%rbx)
        popq %rcx
        ret

/* net_rx_publish: makes NIC rbx's posted RX buffers available (avail.idx
   = N_RXAV), one notification for all of them if the device asked
   (EVENT_IDX: avail_event in [old, new), vring_need_event; else always).
   Clobbers rax, rdi. */
net_rx_publish:
        pushq %rcx
        pushq %rdx
        movq N_RXQ(%rbx), %rdi
        movzwl 0x102(%rdi), %ecx        /* old avail.idx */
        movzwl N_RXAV(%rbx), %eax
        cmpw %cx, %ax
        je 9f
        movw %ax, 0x102(%rdi)           /* after the entries (x86 keeps stores in order) */
        mfence                          /* before reading the device's side */
        cmpb $0, N_EVIDX(%rbx)
        je 8f
        movl %eax, %edx
        subw NQ_AVAIL_EVENT(%rdi), %dx
        decw %dx                        /* new - avail_event - 1 */
        subw %cx, %ax                   /* new - old */
        cmpw %ax, %dx
        jae 9f
8:      movq N_RXNOT(%rbx), %rax
        movw $0, (%rax)
9:      popq %rdx
        popq %rcx
        ret

/* net_static: eth0's address from "ip=A.B.C.D/NN" (at the start of the
   command line or after a space); CF set if there is none. */
net_static:
        movq net_cmdline(%rip), %rsi
        testq %rsi, %rsi
        jz 8f
        movl $1024, %ecx                /* bounded: the command line is short */
        movb $' ', %dl                  /* the byte before */
1:      cmpb $0, (%rsi)
        je 8f
        cmpb $' ', %dl
        jne 2f
        cmpb $'i', (%rsi)
        jne 2f
        cmpb $'p', 1(%rsi)
        jne 2f
        cmpb $'=', 2(%rsi)
        je 3f
2:      movb (%rsi), %dl
        incq %rsi
        decl %ecx
        jnz 1b
8:      stc
        ret
3:      addq $3, %rsi
        call parse_ip
        jc 8b
        cmpb $'/', (%rsi)
        jne 8b
        movl %eax, %edx                 /* edx: the address */
        incq %rsi
        call parsedec
        cmpq $32, %rax
        ja 8b
        movl $32, %ecx
        subl %eax, %ecx
        movq $-1, %rax
        shlq %cl, %rax                  /* /0: shifted by 32, low half 0 */
        bswapl %eax
        movl %eax, N_MASK(%rbx)
        movl %edx, N_IP(%rbx)
        movl $0, N_GW(%rbx)
        clc
        ret

/* parse_ip: dotted quad at rsi -> eax (network byte order), rsi past it;
   CF set if it is not one. */
parse_ip:
        pushq %rcx
        pushq %rdx
        pushq %r8
        xorl %edx, %edx                 /* the address */
        xorl %r8d, %r8d                 /* octets done */
1:      xorl %eax, %eax
        xorl %ecx, %ecx                 /* digits */
2:      movzbl (%rsi), %edi
        subl $'0', %edi
        cmpl $9, %edi
        ja 3f
        imull $10, %eax
        addl %edi, %eax
        incq %rsi
        incl %ecx
        cmpl $3, %ecx
        jbe 2b
        jmp 9f
3:      testl %ecx, %ecx
        jz 9f
        cmpl $255, %eax
        ja 9f
        movl %r8d, %ecx
        shll $3, %ecx
        shll %cl, %eax
        orl %eax, %edx
        incl %r8d
        cmpl $4, %r8d
        je 4f
        cmpb $'.', (%rsi)
        jne 9f
        incq %rsi
        jmp 1b
4:      movl %edx, %eax
        popq %r8
        popq %rdx
        popq %rcx
        clc
        ret
9:      popq %r8
        popq %rdx
        popq %rcx
        stc
        ret

/* putip: eax (network byte order) as a.b.c.d. */
putip:
        pushq %rbx
        pushq %r12
        movl %eax, %ebx
        movl $4, %r12d
1:      movzbl %bl, %eax
        call putdec
        shrl $8, %ebx
        decl %r12d
        jz 2f
        movb $'.', %al
        call putc
        jmp 1b
2:      popq %r12
        popq %rbx
        ret

/* putmac: the 6 bytes at rsi as aa:bb:cc:dd:ee:ff. */
putmac:
        pushq %rbx
        pushq %r12
        movq %rsi, %rbx
        movl $6, %r12d
1:      movzbl (%rbx), %eax
        shrl $4, %eax
        call puthexdigit
        movzbl (%rbx), %eax
        andl $15, %eax
        call puthexdigit
        incq %rbx
        decl %r12d
        jz 2f
        movb $':', %al
        call putc
        jmp 1b
2:      popq %r12
        popq %rbx
        ret

puthexdigit:
        addb $'0', %al
        cmpb $'9', %al
        jbe 1f
        addb $'a' - '9' - 1, %al
1:      jmp putc

/* csum: eax = the Internet checksum (complemented, ready to store with a
   16-bit move) of ecx bytes at rsi, added to the partial sum in edx. */
csum:
        pushq %rsi
        pushq %rcx
        movl %edx, %eax
1:      cmpl $2, %ecx
        jb 2f
        movzwl (%rsi), %edx
        addl %edx, %eax
        addq $2, %rsi
        subl $2, %ecx
        jmp 1b
2:      testl %ecx, %ecx
        jz 3f
        movzbl (%rsi), %edx
        addl %edx, %eax
3:      movl %eax, %edx                 /* fold the carries */
        shrl $16, %edx
        andl $0xffff, %eax
        addl %edx, %eax
        cmpl $0xffff, %eax
        ja 3b
        notl %eax
        andl $0xffff, %eax
        popq %rcx
        popq %rsi
        ret

/* ---- receiving ---- */

/* net_poll: answers whatever arrived on every NIC; changes no register
   (the shell's getc calls it with interrupts off). */
net_poll:
        cmpl $0, net_count(%rip)
        jne 1f
        ret
1:      pushq %rax
        pushq %rbx
        pushq %rcx
        pushq %rdx
        pushq %rsi
        pushq %rdi
        pushq %r8
        pushq %r9
        pushq %r10
        pushq %r11
        pushq %r12
        call virtio_isr_clear           /* before the rings: no lost wake-up */
        movb $0, net_more(%rip)
        xorl %r12d, %r12d
2:      movl %r12d, %eax
        call net_rec
        call net_rx
        call net_rx_arm
        incl %r12d
        cmpl net_count(%rip), %r12d
        jb 2b
        popq %r12
        popq %r11
        popq %r10
        popq %r9
        popq %r8
        popq %rdi
        popq %rsi
        popq %rdx
        popq %rcx
        popq %rbx
        popq %rax
        ret

/* net_rx: handles the used RX buffers of NIC rbx (at most 4 * VQ_SIZE a
   call), reposting them together at the end: one notification at most. */
net_rx:
        pushq %r12
        pushq %r13
        movl $4 * VQ_SIZE, %r13d
1:      movq N_RXQ(%rbx), %rdi
        movzwl 0x202(%rdi), %eax        /* used.idx */
        movzwl N_RXLAST(%rbx), %ecx
        cmpw %cx, %ax
        je 9f
        decl %r13d
        js 9f
        andl $VQ_SIZE - 1, %ecx
        movl 0x204(%rdi,%rcx,8), %r12d  /* used.ring[]: id */
        movl 0x208(%rdi,%rcx,8), %ecx   /* len */
        incw N_RXLAST(%rbx)
        cmpl $VQ_SIZE, %r12d
        jae 1b                          /* not ours: nothing to repost */
        cmpl $RXBUF_LEN, %ecx
        ja 2f
        subl $VNET_HDR + 14, %ecx
        jb 2f
        addl $14, %ecx                  /* ecx: the Ethernet frame's length */
        incq N_RX(%rbx)
        movl %r12d, %esi
        shll $11, %esi
        addq N_RXQ(%rbx), %rsi
        addq $NM_RXBUF + VNET_HDR, %rsi
        call net_frame
        jmp 3f
2:      incq N_DROP(%rbx)
3:      movl %r12d, %edx
        call net_rx_post
        jmp 1b
9:      cmpl $4 * VQ_SIZE, %r13d
        je 8f
        incq N_BATCH(%rbx)
8:      call net_rx_publish             /* the batch's buffers back at once */
        popq %r13
        popq %r12
        ret

/* net_rx_arm: with EVENT_IDX, asks NIC rbx's device for an interrupt at
   the next frame it receives (used_event = the next used entry), then
   looks at the used index once more: a frame used before the device saw
   the request raised none, so net_more tells getc not to sleep. */
net_rx_arm:
        cmpb $0, N_EVIDX(%rbx)
        je 9f
        movq N_RXQ(%rbx), %rdi
        movzwl N_RXLAST(%rbx), %eax
        movw %ax, NQ_USED_EVENT(%rdi)
        mfence                          /* before reading the device's side */
        cmpw 0x202(%rdi), %ax           /* used.idx */
        je 9f
        movb $1, net_more(%rip)
9:      ret

/* net_frame: one Ethernet frame at rsi of ecx bytes (at least 14) on NIC
   rbx. Anything malformed or not for us is dropped (counted). */
net_frame:
        /* For us: our MAC, or a group address. */
        testb $1, (%rsi)
        jnz 1f
        movl (%rsi), %eax
        cmpl N_MAC(%rbx), %eax
        jne .Lnf_ignore
        movw 4(%rsi), %ax
        cmpw N_MAC+4(%rbx), %ax
        jne .Lnf_ignore
1:      movzwl 12(%rsi), %eax
        cmpw $0x0608, %ax               /* ARP */
        je net_arp_in
        cmpw $0x0008, %ax               /* IPv4 */
        je net_ip_in
.Lnf_ignore:
        ret
.Lnf_drop:
        incq N_DROP(%rbx)
        ret

/* net_learn: the peer is IP eax at the MAC at rdx. */
net_learn:
        movl %eax, N_PEERIP(%rbx)
        movl (%rdx), %eax
        movl %eax, N_PEERMAC(%rbx)
        movw 4(%rdx), %ax
        movw %ax, N_PEERMAC+4(%rbx)
        ret

net_arp_in:
        cmpl $42, %ecx
        jb .Lnf_drop
        cmpl $0x00080100, 14(%rsi)      /* Ethernet, IPv4 */
        jne .Lnf_drop
        cmpw $0x0406, 18(%rsi)          /* 6-byte, 4-byte addresses */
        jne .Lnf_drop
        movl N_IP(%rbx), %eax
        testl %eax, %eax
        jz .Lnf_ignore
        cmpl %eax, 38(%rsi)             /* the target: us? */
        jne .Lnf_ignore
        movl 28(%rsi), %eax             /* learn the sender */
        leaq 22(%rsi), %rdx
        call net_learn
        cmpw $0x0100, 20(%rsi)          /* a request: answer it */
        jne .Lnf_ignore
        leaq 22(%rsi), %rdx
        movw $0x0608, %ax
        call eth_start                  /* rdi: the ARP payload */
        movl $0x00080100, (%rdi)
        movl $0x02000406, 4(%rdi)       /* sizes, reply */
        movl N_MAC(%rbx), %eax
        movl %eax, 8(%rdi)
        movw N_MAC+4(%rbx), %ax
        movw %ax, 12(%rdi)
        movl N_IP(%rbx), %eax
        movl %eax, 14(%rdi)
        movl 22(%rsi), %eax
        movl %eax, 18(%rdi)
        movw 26(%rsi), %ax
        movw %ax, 22(%rdi)
        movl 28(%rsi), %eax
        movl %eax, 24(%rdi)
        movl $42, %ecx
        jmp net_tx

net_ip_in:
        cmpl $34, %ecx
        jb .Lnf_drop
        cmpb $0x45, 14(%rsi)            /* IPv4 without options */
        jne .Lnf_drop
        movzwl 16(%rsi), %eax
        xchgb %al, %ah                  /* total length */
        cmpl $20, %eax
        jb .Lnf_drop
        leal 14(%rax), %edx
        cmpl %ecx, %edx
        ja .Lnf_drop
        movl %edx, %ecx                 /* ecx: the frame without padding */
        testw $0xff3f, 20(%rsi)         /* a fragment: not handled */
        jnz .Lnf_drop
        movzbl 23(%rsi), %edx           /* protocol */
        movl 30(%rsi), %eax             /* destination */
        cmpl N_IP(%rbx), %eax
        je 1f
        /* Not our address: only DHCP's answers (to 68) while we have none. */
        cmpl $0, N_IP(%rbx)
        jne .Lnf_ignore
        cmpl $17, %edx
        jne .Lnf_ignore
        cmpl $42, %ecx
        jb .Lnf_drop
        cmpw $0x4400, 36(%rsi)
        jne .Lnf_ignore
        jmp dhcp_in
1:      pushq %rdx
        movl 26(%rsi), %eax
        leaq 6(%rsi), %rdx
        call net_learn
        popq %rdx
        cmpl $1, %edx
        je net_icmp_in
        cmpl $17, %edx
        je net_udp_in
        ret

net_icmp_in:
        cmpl $42, %ecx
        jb .Lnf_drop
        cmpb $0, 34(%rsi)               /* echo reply */
        je 1f
        cmpb $8, 34(%rsi)               /* echo request */
        jne .Lnf_ignore
        call net_reply_copy             /* rdi: the reply's IP header */
        movb $0, 20(%rdi)               /* echo reply */
        movw $0, 22(%rdi)
        pushq %rsi
        pushq %rcx
        leaq 20(%rdi), %rsi
        subl $34, %ecx
        xorl %edx, %edx
        call csum
        movw %ax, 22(%rdi)
        popq %rcx
        popq %rsi
        jmp net_tx
        /* A reply to the echo request `ping` waits for: counted. */
1:      cmpw $PING_ID, 38(%rsi)
        jne .Lnf_ignore
        movzwl 40(%rsi), %eax
        xchgb %al, %ah
        cmpl net_ping_seq(%rip), %eax
        jne .Lnf_ignore
        incl net_ping_got(%rip)
        ret

net_udp_in:
        cmpl $42, %ecx
        jb .Lnf_drop
        movzwl 38(%rsi), %eax
        xchgb %al, %ah                  /* UDP length */
        cmpl $8, %eax
        jb .Lnf_drop
        leal 34(%rax), %edx
        cmpl %ecx, %edx
        ja .Lnf_drop
        cmpw $0x0700, 36(%rsi)          /* to port 7: echo */
        je 1f
        cmpw $0x409c, 36(%rsi)          /* to our port: an answer */
        jne 2f
        incl net_udp_got(%rip)
        ret
2:      cmpw $0x4400, 36(%rsi)          /* to 68: DHCP */
        je dhcp_in
        ret
1:      call net_reply_copy
        movl 20(%rdi), %eax             /* swap the ports */
        roll $16, %eax
        movl %eax, 20(%rdi)
        movw $0, 26(%rdi)               /* no UDP checksum */
        jmp net_tx

/* net_reply_copy: copies the IPv4 frame at rsi (ecx bytes) to NIC rbx's
   TX buffer addressed back to its sender, with a fresh IP header
   checksum; rdi = the reply's IP header. */
net_reply_copy:
        pushq %rsi
        pushq %rcx
        movq N_RXQ(%rbx), %rdi
        addq $NM_TXBUF + VNET_HDR, %rdi
        rep movsb
        popq %rcx
        popq %rsi
        movq N_RXQ(%rbx), %rdi
        addq $NM_TXBUF + VNET_HDR, %rdi
        movl 6(%rsi), %eax              /* to the sender's MAC */
        movl %eax, (%rdi)
        movw 10(%rsi), %ax
        movw %ax, 4(%rdi)
        movl N_MAC(%rbx), %eax
        movl %eax, 6(%rdi)
        movw N_MAC+4(%rbx), %ax
        movw %ax, 10(%rdi)
        addq $14, %rdi
        movl 26(%rsi), %eax             /* to the sender's address */
        movl %eax, 16(%rdi)
        movl N_IP(%rbx), %eax
        movl %eax, 12(%rdi)
        movb $64, 8(%rdi)               /* TTL */
        jmp ip_csum

/* ip_csum: the checksum of the IP header at rdi. */
ip_csum:
        pushq %rsi
        pushq %rcx
        pushq %rdx
        movw $0, 10(%rdi)
        movq %rdi, %rsi
        movl $20, %ecx
        xorl %edx, %edx
        call csum
        movw %ax, 10(%rdi)
        popq %rdx
        popq %rcx
        popq %rsi
        ret

/* ---- sending ---- */

/* eth_start: the virtio-net header and an Ethernet header to the MAC at
   rdx, of type ax (network order), in NIC rbx's TX buffer; rdi = past it. */
eth_start:
        movq N_RXQ(%rbx), %rdi
        addq $NM_TXBUF, %rdi
        movq $0, (%rdi)                 /* virtio_net_hdr_v1: no offloads */
        movl $0, 8(%rdi)
        movw %ax, VNET_HDR + 12(%rdi)
        movl (%rdx), %eax
        movl %eax, VNET_HDR(%rdi)
        movw 4(%rdx), %ax
        movw %ax, VNET_HDR + 4(%rdi)
        movl N_MAC(%rbx), %eax
        movl %eax, VNET_HDR + 6(%rdi)
        movw N_MAC+4(%rbx), %ax
        movw %ax, VNET_HDR + 10(%rdi)
        addq $VNET_HDR + 14, %rdi
        ret

/* net_tx: sends NIC rbx's TX buffer, an Ethernet frame of ecx bytes after
   the virtio-net header, and waits (bounded) for the device to use it. */
net_tx:
        pushq %rsi
        pushq %rdi
        pushq %rdx
        pushq %rcx
        pushq %r8
        pushq %r9
        movq N_RXQ(%rbx), %rdi
        leaq NM_TXBUF(%rdi), %rax
        addq $NM_TXQ, %rdi              /* rdi: the TX queue's page */
        movq $0, (%rax)                 /* virtio_net_hdr_v1: no offloads */
        movl $0, 8(%rax)
        movq %rax, 0(%rdi)              /* descriptor 0 */
        addl $VNET_HDR, %ecx
        movl %ecx, 8(%rdi)
        movl $0, 12(%rdi)               /* readable, no next */
        movzwl 0x202(%rdi), %r9d        /* used.idx before */
        xorl %edx, %edx
        leaq N_TXAV(%rbx), %r8
        call vq_push                    /* eax: the new available index */
        cmpb $0, N_EVIDX(%rbx)
        je 4f
        decl %eax                       /* kick only if the device waits at */
        cmpw NQ_AVAIL_EVENT(%rdi), %ax  /* the index before this frame (its */
        jne 5f                          /* used_event stays 0: no interrupts) */
4:      movq N_TXNOT(%rbx), %rax
        movw $1, (%rax)
5:      incq N_TX(%rbx)
        call tsc
        leaq WAIT_TSC(%rax), %r8
1:      cmpw 0x202(%rdi), %r9w
        jne 2f
        pause
        call tsc
        cmpq %r8, %rax
        jb 1b
2:      popq %r9
        popq %r8
        popq %rcx
        popq %rdx
        popq %rdi
        popq %rsi
        ret

/* ip_start: Ethernet (to the MAC at rdx) and IPv4 (from N_IP to eax,
   protocol r11b) headers for ecx bytes after the IP header in NIC rbx's
   TX buffer; rdi = past the IP header. */
ip_start:
        pushq %rax
        movw $0x0008, %ax
        call eth_start
        popq %rax
        movl %eax, 16(%rdi)             /* destination */
        movl N_IP(%rbx), %eax
        movl %eax, 12(%rdi)
        movw $0x0045, (%rdi)            /* version 4, 20-byte header, TOS 0 */
        leal 20(%rcx), %eax
        xchgb %al, %ah
        movw %ax, 2(%rdi)               /* total length */
        movl $0, 4(%rdi)                /* id 0, no fragments */
        movb $64, 8(%rdi)               /* TTL */
        movb %r11b, 9(%rdi)
        call ip_csum
        addq $20, %rdi
        ret

/* udp_start: Ethernet (to the MAC at rdx), IPv4 (from N_IP to eax) and
   UDP (from sport r9w to dport r10w, host order) headers for ecx payload
   bytes in NIC rbx's TX buffer; rdi = the payload. ecx = the frame's
   length. */
udp_start:
        pushq %r11
        pushq %rcx
        addl $8, %ecx
        movl $17, %r11d                 /* UDP */
        call ip_start
        popq %rcx
        popq %r11
        movw %r9w, %ax
        xchgb %al, %ah
        movw %ax, 0(%rdi)
        movw %r10w, %ax
        xchgb %al, %ah
        movw %ax, 2(%rdi)
        leal 8(%rcx), %eax
        xchgb %al, %ah
        movw %ax, 4(%rdi)
        movw $0, 6(%rdi)                /* no checksum */
        addq $8, %rdi
        addl $42, %ecx
        ret

/* net_resolve: the MAC of next hop eax on NIC rbx, into N_PEERMAC (from
   the last peer, or by ARP: three requests, each waited for ~1/10 s);
   CF set if nobody answered. */
net_resolve:
        pushq %r12
        pushq %r13
        movl %eax, %r12d
        cmpl %eax, N_PEERIP(%rbx)
        je 8f
        movl $3, %r13d
1:      leaq bcast_mac(%rip), %rdx
        movw $0x0608, %ax
        call eth_start
        movl $0x00080100, (%rdi)
        movl $0x01000406, 4(%rdi)       /* sizes, request */
        movl N_MAC(%rbx), %eax
        movl %eax, 8(%rdi)
        movw N_MAC+4(%rbx), %ax
        movw %ax, 12(%rdi)
        movl N_IP(%rbx), %eax
        movl %eax, 14(%rdi)
        movl $0, 18(%rdi)
        movw $0, 22(%rdi)
        movl %r12d, 24(%rdi)
        movl $42, %ecx
        call net_tx
        call tsc
        leaq WAIT_TSC(%rax), %rsi
        pushq %rsi
2:      call net_rx
        cmpl %r12d, N_PEERIP(%rbx)
        je 7f
        call tsc
        cmpq (%rsp), %rax
        jb 2b
        popq %rsi
        decl %r13d
        jnz 1b
        popq %r13
        popq %r12
        stc
        ret
7:      popq %rsi
8:      popq %r13
        popq %r12
        clc
        ret

/* net_route: for destination eax, rbx = the NIC whose subnet holds it
   (else eth0) and eax = the next hop (the destination or the gateway). */
net_route:
        pushq %rcx
        pushq %rdx
        movl %eax, %edx
        xorl %ecx, %ecx
1:      movl %ecx, %eax
        call net_rec
        movl N_IP(%rbx), %eax
        xorl %edx, %eax
        testl N_MASK(%rbx), %eax
        jnz 2f
        cmpl $0, N_IP(%rbx)
        jne 3f
2:      incl %ecx
        cmpl net_count(%rip), %ecx
        jb 1b
        leaq net_table(%rip), %rbx      /* eth0, through its gateway */
        movl N_GW(%rbx), %eax
        testl %eax, %eax
        jnz 4f
3:      movl %edx, %eax
4:      popq %rdx
        popq %rcx
        ret

/* udp_send: ecx payload bytes at rsi to eax port r10w from r12 (host
   order) through NIC rbx, to the MAC in N_PEERMAC. */
udp_send:
        pushq %r9
        movl %r12d, %r9d
        leaq N_PEERMAC(%rbx), %rdx
        pushq %rcx
        call udp_start
        popq %rax                       /* the payload's length */
        pushq %rcx
        movl %eax, %ecx
        rep movsb
        popq %rcx
        popq %r9
        jmp net_tx

/* ---- DHCP ---- */

/* dhcp: leases an address for NIC rbx (N_IP stays 0 if none). */
dhcp:
        pushq %r12
        pushq %r13
        call tsc
        xorl N_MAC+2(%rbx), %eax
        movl %eax, dh_xid(%rip)
        movl $0, dh_server(%rip)
        movl $1, %r12d                  /* DISCOVER, for an OFFER: ~20 s at most */
        movl $2, %r13d
        movl $6, %ecx
        call dhcp_exchange
        jc 9f
        /* REQUEST, for an ACK: ~20 s at most. dnsmasq answers nothing
           while it pings an address it is about to offer another client
           (up to 3 s each, one after the other), so a REQUEST sent then
           waits for all of them. */
        movl $3, %r12d
        movl $5, %r13d
        movl $6, %ecx
        call dhcp_exchange
        jc 9f
        movl dh_yiaddr(%rip), %eax
        movl %eax, N_IP(%rbx)
        movl dh_mask(%rip), %eax
        movl %eax, N_MASK(%rbx)
        movl dh_router(%rip), %eax
        movl %eax, N_GW(%rbx)
9:      popq %r13
        popq %r12
        ret

/* dhcp_exchange: sends message type r12d until an answer of type r13d
   comes, ecx times at most, waiting 2, 4, 8, ... WAIT_TSC after each
   (dnsmasq pings an address for up to 3 s before it offers it); CF set if
   none came. */
dhcp_exchange:
        pushq %r14
        pushq %r15
        movl %ecx, %r14d
        movq $WAIT_TSC * 2, %r15        /* r15: this try's wait */
1:      movl $0, dh_type(%rip)
        call dhcp_send
        call tsc
        addq %r15, %rax
        pushq %rax                      /* the deadline */
2:      call net_rx
        cmpl %r13d, dh_type(%rip)
        je 3f
        call tsc
        cmpq (%rsp), %rax
        jb 2b
        popq %rax
        shlq $1, %r15
        decl %r14d
        jnz 1b
        popq %r15
        popq %r14
        stc
        ret
3:      popq %rax
        popq %r15
        popq %r14
        clc
        ret

/* dhcp_send: a BOOTP request of DHCP message type r12d, broadcast. */
dhcp_send:
        xorl %eax, %eax
        decl %eax                       /* to 255.255.255.255 */
        movl $300, %ecx                 /* the BOOTP minimum */
        movw $68, %r9w
        movw $67, %r10w
        leaq bcast_mac(%rip), %rdx
        call udp_start
        pushq %rcx
        pushq %rdi
        movl $300, %ecx
        xorl %eax, %eax
        rep stosb
        popq %rdi
        movl $0x00060101, (%rdi)        /* request, Ethernet, 6, 0 hops */
        movl dh_xid(%rip), %eax
        movl %eax, 4(%rdi)
        movw $0x0080, 10(%rdi)          /* flags: broadcast answers */
        movl N_MAC(%rbx), %eax
        movl %eax, 28(%rdi)             /* chaddr */
        movw N_MAC+4(%rbx), %ax
        movw %ax, 32(%rdi)
        movl $0x63538263, 236(%rdi)     /* magic cookie */
        leaq 240(%rdi), %rsi
        movw $0x0135, (%rsi)            /* 53: message type */
        movb %r12b, 2(%rsi)
        movl $0x03010237, 3(%rsi)       /* 55: want mask (1), router (3) */
        addq $7, %rsi
        cmpl $3, %r12d
        jne 1f
        movw $0x0432, (%rsi)            /* 50: the address offered */
        movl dh_yiaddr(%rip), %eax
        movl %eax, 2(%rsi)
        movw $0x0436, 6(%rsi)           /* 54: from that server */
        movl dh_server(%rip), %eax
        movl %eax, 8(%rsi)
        addq $12, %rsi
1:      movb $0xff, (%rsi)              /* end */
        popq %rcx
        jmp net_tx

/* dhcp_in: a UDP datagram to port 68 (frame rsi, ecx bytes, lengths
   checked by the caller up to the UDP header): takes an OFFER or an ACK
   for our transaction into dh_*; ignores anything else. */
dhcp_in:
        movzwl 38(%rsi), %eax
        xchgb %al, %ah
        leal 34(%rax), %edx
        cmpl %ecx, %edx                 /* the UDP length inside the frame? */
        ja .Lnf_drop
        subl $8, %eax                   /* eax: BOOTP bytes */
        cmpl $240, %eax
        jb .Lnf_drop
        leaq 42(%rsi), %rdi             /* rdi: BOOTP */
        cmpb $2, (%rdi)                 /* a reply */
        jne .Lnf_ignore
        movl dh_xid(%rip), %edx
        cmpl %edx, 4(%rdi)
        jne .Lnf_ignore
        cmpl $0x63538263, 236(%rdi)
        jne .Lnf_drop
        leaq (%rdi,%rax), %r8           /* r8: the end of the options */
        leaq 240(%rdi), %rdx            /* rdx: the next option */
        xorl %r9d, %r9d                 /* r9: its message type */
        movl $0xff, %r10d               /* r10: mask, default /24 */
        shll $24, %r10d
        notl %r10d
        xorl %r11d, %r11d               /* r11: router */
        pushq %r12
        xorl %r12d, %r12d               /* r12: server */
1:      cmpq %r8, %rdx
        jae 5f
        movzbl (%rdx), %eax
        cmpl $0, %eax                   /* pad */
        jne 2f
        incq %rdx
        jmp 1b
2:      cmpl $255, %eax                 /* end */
        je 5f
        leaq 2(%rdx), %rcx
        cmpq %r8, %rcx
        ja 5f
        movzbl 1(%rdx), %ecx            /* the option's length */
        leaq 2(%rdx,%rcx), %rsi         /* rsi: the option after it */
        cmpq %r8, %rsi
        ja 5f
        cmpl $53, %eax
        jne 3f
        cmpl $1, %ecx
        jb 4f
        movzbl 2(%rdx), %r9d
3:      cmpl $4, %ecx                   /* 4-byte options */
        jb 4f
        cmpl $1, %eax
        jne 31f
        movl 2(%rdx), %r10d
31:     cmpl $3, %eax
        jne 32f
        movl 2(%rdx), %r11d
32:     cmpl $54, %eax
        jne 4f
        movl 2(%rdx), %r12d
4:      movq %rsi, %rdx
        jmp 1b
5:      cmpl $5, dh_type(%rip)          /* acked already: a late OFFER */
        je 8f                           /* must not undo it */
        cmpl $2, %r9d                   /* an OFFER */
        jne 6f
        movl 16(%rdi), %eax
        movl %eax, dh_yiaddr(%rip)
        movl %r12d, dh_server(%rip)
        jmp 7f
6:      cmpl $5, %r9d                   /* an ACK of the address asked */
        jne 8f
        movl 16(%rdi), %eax
        cmpl dh_yiaddr(%rip), %eax
        jne 8f
7:      movl %r10d, dh_mask(%rip)
        movl %r11d, dh_router(%rip)
        movl %r9d, dh_type(%rip)
8:      popq %r12
        ret

/* ---- shell words ---- */

net_commands:
        leaq linebuf(%rip), %rsi
        leaq w_udpsend(%rip), %rdi
        call prefix
        jc net_udpsend_cmd
        leaq linebuf(%rip), %rsi
        leaq w_udprr(%rip), %rdi
        call prefix
        jc net_udprr_cmd
        leaq linebuf(%rip), %rsi
        leaq w_udpburst(%rip), %rdi
        call prefix
        jc net_udpburst_cmd
        leaq linebuf(%rip), %rsi
        leaq w_ping(%rip), %rdi
        call prefix
        jc net_ping_cmd
        leaq linebuf(%rip), %rsi
        leaq w_netstat(%rip), %rdi
        call prefix
        jc net_netstat_cmd
        leaq linebuf(%rip), %rsi
        leaq w_netbad(%rip), %rdi
        call prefix
        jc net_netbad_cmd
        jmp .Lunknown_command

net_none:
        leaq msg_net_none(%rip), %rsi
        call puts
        jmp shell

/* net_dest: parses "A.B.C.D PORT" at rsi: r13d = the address, r10w = the
   port, rbx = the NIC, and resolves the next hop; rsi past the port.
   Returns to the shell itself (after a message) on any failure. */
net_dest:
        cmpl $0, net_count(%rip)
        je 9f
        call skipsp
        call parse_ip
        jc 8f
        movl %eax, %r13d
        call skipsp
        call parsedec
        movl %eax, %r10d
        call skipsp
        pushq %rsi
        movl %r13d, %eax
        call net_route
        pushq %r10
        call net_resolve
        popq %r10
        popq %rsi
        jc 7f
        ret
7:      addq $8, %rsp
        leaq msg_udp_noarp(%rip), %rsi
        call puts
        jmp shell
8:      addq $8, %rsp
        jmp .Lunknown_command
9:      addq $8, %rsp
        jmp net_none

net_udpsend_cmd:
        call net_dest
        movq %rsi, %rdi                 /* the text: the rest of the line */
        xorl %ecx, %ecx
1:      cmpb $0, (%rdi,%rcx)
        je 2f
        incl %ecx
        cmpl $126, %ecx
        jb 1b
2:      movl %r13d, %eax
        movl $UDP_LPORT, %r12d
        call udp_send
        leaq msg_udp_sent(%rip), %rsi
        call puts
        jmp shell

net_udprr_cmd:
        call net_dest
        movw %r10w, net_dport(%rip)
        call parsedec
        movq %rax, %r14                 /* r14: N */
        xorl %r15d, %r15d               /* r15: lost */
        pushq %rbp
        movq %rax, %rbp                 /* rbp: left */
        call tsc
        pushq %rax                      /* the start */
1:      testq %rbp, %rbp
        jz 4f
        movl $0, net_udp_got(%rip)
        leaq rr_payload(%rip), %rsi
        movl $8, %ecx
        movl %r13d, %eax
        movl $UDP_LPORT, %r12d
        movw net_dport(%rip), %r10w
        call udp_send
        call tsc
        leaq WAIT_TSC*2(%rax), %rax
        pushq %rax                      /* the deadline */
2:      call net_rx
        cmpl $0, net_udp_got(%rip)
        jne 3f
        call tsc
        cmpq (%rsp), %rax
        jb 2b
        incq %r15
3:      popq %rax
        decq %rbp
        jmp 1b
4:      call tsc
        popq %rdx
        popq %rbp
        subq %rdx, %rax
        pushq %rax
        leaq msg_udprr(%rip), %rsi
        call puts
        movq %r14, %rax
        call putdec
        leaq msg_errors(%rip), %rsi
        call puts
        movq %r15, %rax
        call putdec
        leaq msg_cycles(%rip), %rsi
        call puts
        popq %rax
        call putdec
        call newline
        jmp shell

/* ping A.B.C.D [N]: echo requests to the next hop's MAC as resolved once
   (copied: N_PEERMAC follows whoever sent to us last). */
net_ping_cmd:
        cmpl $0, net_count(%rip)
        je net_none
        call skipsp
        call parse_ip
        jc .Lunknown_command
        movl %eax, %r13d                /* r13: the destination */
        call skipsp
        call parsedec
        testq %rax, %rax
        jnz 1f
        movl $1, %eax
1:      cmpq $PING_MAX, %rax
        jbe 2f
        movl $PING_MAX, %eax
2:      movq %rax, %r14                 /* r14: N */
        movl %r13d, %eax
        call net_route
        call net_resolve
        jc 8f
        movl N_PEERMAC(%rbx), %eax
        movl %eax, net_ping_mac(%rip)
        movw N_PEERMAC+4(%rbx), %ax
        movw %ax, net_ping_mac+4(%rip)
        xorl %r15d, %r15d               /* r15: replies */
        xorl %r12d, %r12d               /* r12: the sequence number */
3:      cmpq %r14, %r12
        jae 6f
        incl %r12d
        movl %r12d, net_ping_seq(%rip)
        movl $0, net_ping_got(%rip)
        movl %r13d, %eax
        leaq net_ping_mac(%rip), %rdx
        movl $8 + PING_DATA, %ecx
        movl $1, %r11d                  /* ICMP */
        call ip_start
        movl $8, (%rdi)                 /* echo request, code 0, checksum 0 */
        movw $PING_ID, 4(%rdi)
        movl %r12d, %eax
        xchgb %al, %ah
        movw %ax, 6(%rdi)
        pushq %rdi
        addq $8, %rdi
        movl $PING_DATA, %ecx
        movb $'p', %al
        rep stosb
        movq (%rsp), %rsi
        movl $8 + PING_DATA, %ecx
        xorl %edx, %edx
        call csum
        popq %rdi
        movw %ax, 2(%rdi)
        movl $34 + 8 + PING_DATA, %ecx
        call net_tx
        call tsc
        leaq WAIT_TSC*2(%rax), %rax
        pushq %rax                      /* the deadline */
4:      call net_rx
        cmpl $0, net_ping_got(%rip)
        jne 5f
        call tsc
        cmpq (%rsp), %rax
        jb 4b
        decq %r15
5:      incq %r15
        popq %rax
        jmp 3b
6:      movl $0, net_ping_seq(%rip)
        leaq msg_ping_sent(%rip), %rsi
        call puts
        movq %r14, %rax
        call putdec
        leaq msg_ping_rcvd(%rip), %rsi
        call puts
        movq %r15, %rax
        call putdec
        call newline
        jmp shell
8:      leaq msg_ping_noarp(%rip), %rsi
        call puts
        jmp shell

net_udpburst_cmd:
        call net_dest
        movw %r10w, net_dport(%rip)
        call parsedec
        movq %rax, %r14                 /* r14: N */
        movq %rax, %r15                 /* r15: left */
        call tsc
        pushq %rax                      /* the start */
1:      testq %r15, %r15
        jz 2f
        leaq rr_payload(%rip), %rsi
        movl $8, %ecx
        movl %r13d, %eax
        movl $UDP_LPORT, %r12d
        movw net_dport(%rip), %r10w
        call udp_send
        decq %r15
        jmp 1b
2:      call tsc
        popq %rdx
        subq %rdx, %rax
        pushq %rax
        leaq msg_udpburst(%rip), %rsi
        call puts
        movq %r14, %rax
        call putdec
        leaq msg_cycles(%rip), %rsi
        call puts
        popq %rax
        call putdec
        call newline
        jmp shell

net_netstat_cmd:
        cmpl $0, net_count(%rip)
        je net_none
        xorl %r12d, %r12d
1:      movl %r12d, %eax
        call net_rec
        leaq msg_netstat(%rip), %rsi
        call puts
        movl %r12d, %eax
        call putdec
        leaq msg_rxeq(%rip), %rsi
        call puts
        movq N_RX(%rbx), %rax
        call putdec
        leaq msg_txeq(%rip), %rsi
        call puts
        movq N_TX(%rbx), %rax
        call putdec
        leaq msg_dropeq(%rip), %rsi
        call puts
        movq N_DROP(%rbx), %rax
        call putdec
        leaq msg_batcheq(%rip), %rsi
        call puts
        movq N_BATCH(%rbx), %rax
        call putdec
        leaq msg_sleepeq(%rip), %rsi
        call puts
        movq net_sleeps(%rip), %rax
        call putdec
        call newline
        incl %r12d
        cmpl net_count(%rip), %r12d
        jb 1b
        jmp shell

/* netbad: descriptor 2 (a 6-byte header) chained to descriptor 3 (a frame
   at 1 TiB) on eth0's TX queue, kicked; a short wait for the device. */
net_netbad_cmd:
        cmpl $0, net_count(%rip)
        je net_none
        leaq net_table(%rip), %rbx
        movq N_RXQ(%rbx), %rdi
        leaq NM_TXBUF(%rdi), %rax
        addq $NM_TXQ, %rdi
        movq %rax, 32(%rdi)             /* descriptor 2: the short header */
        movl $6, 40(%rdi)
        movw $1, 44(%rdi)               /* NEXT */
        movw $3, 46(%rdi)
        movabsq $BIG_ADDR, %rax
        movq %rax, 48(%rdi)             /* descriptor 3: beyond RAM */
        movl $64, 56(%rdi)
        movl $0, 60(%rdi)
        movl $2, %edx
        leaq N_TXAV(%rbx), %r8
        call vq_push
        movq N_TXNOT(%rbx), %rax
        movw $1, (%rax)
        call tsc
        leaq WAIT_TSC(%rax), %r8
1:      pause
        call tsc
        cmpq %r8, %rax
        jb 1b
        leaq msg_netbad(%rip), %rsi
        call puts
        jmp shell

/* ---- interrupts ---- */

/* net_irq_setup: each NIC's INTx line to isr_net and unmasked at the
   8259s (after serial_init_irq); without a usable line the shell polls. */
net_irq_setup:
        cmpl $0, net_count(%rip)
        je 9f
        cli
        pushq %rbx
        pushq %r12
        xorl %r12d, %r12d
1:      movl %r12d, %eax
        call net_rec
        movl V_IRQ(%rbx), %ecx
        cmpl $15, %ecx
        ja 5f
        cmpl $2, %ecx                   /* 0 timer, 1 keyboard, 2 cascade, 4 COM1 */
        jbe 5f
        cmpl $4, %ecx
        je 5f
        leal 0x20(%rcx), %eax
        shll $4, %eax
        leaq idt(%rip), %rdi
        addq %rax, %rdi
        leaq isr_net(%rip), %rax
        pushq %rcx
        call set_gate
        popq %rcx
        cmpl $8, %ecx
        jae 2f
        movl $1, %eax
        shll %cl, %eax
        notl %eax
        movl %eax, %edx
        inb $0x21, %al
        andb %dl, %al
        outb %al, $0x21
        jmp 6f
2:      subl $8, %ecx
        movl $1, %eax
        shll %cl, %eax
        notl %eax
        movl %eax, %edx
        inb $0xa1, %al
        andb %dl, %al
        outb %al, $0xa1
        inb $0x21, %al
        andb $0xfb, %al                 /* the cascade */
        outb %al, $0x21
        jmp 6f
5:      movl $1, net_spin(%rip)
6:      incl %r12d
        cmpl net_count(%rip), %r12d
        jb 1b
        /* A backstop for an interrupt a line loses (seen with QEMU on an
           emulating KVM, where the cascaded 8259 did not always wake the
           vCPU): the PIT at 100 Hz on IRQ0 wakes the shell to poll. */
        movb $0x34, %al                 /* channel 0, lo/hi, rate generator */
        outb %al, $0x43
        movb $PIT_DIVISOR & 0xff, %al
        outb %al, $0x40
        movb $PIT_DIVISOR >> 8, %al
        outb %al, $0x40
        inb $0x21, %al
        andb $0xfe, %al
        outb %al, $0x21
        popq %r12
        popq %rbx
        sti
9:      ret

/* isr_net: clears the virtio ISR status and EOIs; the shell polls after
   waking. */
isr_net:
        call virtio_isr_clear
        pushq %rax
        movb $0x20, %al
        outb %al, $0xa0
        outb %al, $0x20
        popq %rax
        iretq

/* virtio_isr_clear: reads (and so clears) the ISR status of every virtio
   function that may share a NIC's line, which lowers it: whatever the
   devices use after this raises it again, so an edge-triggered line
   (ours, or one another function holds up) wakes the shell as well as a
   level-triggered one. Changes no register. */
virtio_isr_clear:
        pushq %rax
        pushq %rbx
        pushq %rcx
        xorl %ecx, %ecx
1:      cmpl net_count(%rip), %ecx
        jae 2f
        movl %ecx, %eax
        imull $N_STRIDE, %eax, %eax
        leaq net_table(%rip), %rbx
        movq V_ISR(%rbx,%rax), %rax
        testq %rax, %rax
        jz 11f
        movb (%rax), %al
11:     incl %ecx
        jmp 1b
2:      xorl %ecx, %ecx
3:      cmpl blk_count(%rip), %ecx
        jae 4f
        movl %ecx, %eax
        imull $BLK_STRIDE, %eax, %eax
        leaq blk_table(%rip), %rbx
        movq V_ISR(%rbx,%rax), %rax
        testq %rax, %rax
        jz 31f
        movb (%rax), %al
31:     incl %ecx
        jmp 3b
4:      cmpl $0, bln_ready(%rip)
        je 5f
        movq bln_dev+V_ISR(%rip), %rax
        testq %rax, %rax
        jz 5f
        movb (%rax), %al
5:      popq %rcx
        popq %rbx
        popq %rax
        ret

        .pushsection .rodata, "a"
w_udpsend:     .asciz "udpsend "
w_udprr:       .asciz "udprr "
w_netstat:     .asciz "netstat"
w_ping:        .asciz "ping "
w_udpburst:    .asciz "udpburst "
msg_udpburst:  .asciz "UDPBURST N="
msg_ping_sent: .asciz "PING SENT="
msg_ping_rcvd: .asciz " RECEIVED="
msg_ping_noarp: .asciz "PING NOARP\r\n"
w_netbad:      .asciz "netbad"
msg_net:       .asciz "NET eth"
msg_mac:       .asciz " MAC="
msg_ipeq:      .asciz " IP="
msg_none:      .asciz "none"
msg_net_none:  .asciz "NET none\r\n"
msg_udp_sent:  .asciz "UDP SENT\r\n"
msg_udp_noarp: .asciz "UDP NOARP\r\n"
msg_udprr:     .asciz "UDPRR N="
msg_netstat:   .asciz "NETSTAT eth"
msg_rxeq:      .asciz " RX="
msg_txeq:      .asciz " TX="
msg_dropeq:    .asciz " DROP="
msg_batcheq:   .asciz " BATCHES="
msg_sleepeq:   .asciz " SLEEPS="
msg_netbad:    .asciz "NETBAD SENT\r\n"
bcast_mac:     .byte 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
rr_payload:    .ascii "udprr-00"
        .popsection
        .pushsection .bss, "aw", @nobits
        .align 4096
net_mem:     .fill NET_MEM * MAX_NET, 1, 0
net_table:   .fill N_STRIDE * MAX_NET, 1, 0
net_cmdline: .quad 0
net_count:   .long 0
net_spin:    .long 0
net_more:    .byte 0
        .balign 8
net_sleeps:  .quad 0                    /* hlts in getc: waits for a wake-up */
        .align 4
net_udp_got: .long 0
net_dport:   .word 0
        .align 4
net_ping_seq: .long 0
net_ping_got: .long 0
net_ping_mac: .fill 6, 1, 0
        .align 4
dh_xid:      .long 0
dh_type:     .long 0
dh_yiaddr:   .long 0
dh_server:   .long 0
dh_mask:     .long 0
dh_router:   .long 0
        .popsection
/* ---------------- end of the virtio-net block ---------------- */

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
        call net_poll                   /* frames for us, with a NIC */
        movw $COM1 + 5, %dx
        inb %dx, %al
        testb $1, %al
        jnz 24f
        cmpl $0, net_spin(%rip)         /* a NIC without an interrupt line */
        jne 28f
        cmpb $0, net_more(%rip)         /* frames used after the last look */
        jne 28f
        incq net_sleeps(%rip)
        sti
        hlt                             /* sti's shadow: no lost wake-up */
        jmp getc
28:     sti
        pause
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

/* ---------------- virtio-pci modern transport (shared) ----------------
 * The parts every virtio driver here uses: finding a function on bus 0,
 * reading its vendor capabilities into a transport record, the status and
 * feature handshake, setting up a queue of VQ_SIZE in one 4 KiB page
 * (descriptors at 0, available ring at 0x100, used ring at 0x200), and
 * making a descriptor chain available. A transport record (V_*): */
        .set V_COMMON, 0                /* common configuration */
        .set V_NOTIFY, 8                /* notification area */
        .set V_DEVCFG, 16               /* device configuration */
        .set V_ISR, 24                  /* ISR status (read clears) */
        .set V_MULT, 32                 /* notify_off_multiplier (32-bit) */
        .set V_IRQ, 36                  /* the legacy INTx line (32-bit) */
        .set V_SIZE, 40

/* pci_find: the first slot from edi on (below 32) whose vendor:device
   dword is edx, in edi; CF set if none. */
pci_find:
        cmpl $32, %edi
        jae 2f
        xorl %esi, %esi
        call pci_read32
        cmpl %edx, %eax
        je 1f
        incl %edi
        jmp pci_find
1:      clc
        ret
2:      stc
        ret

/* vpci_caps: turns on memory decoding and bus mastering of the function
   in slot edi and fills the transport record at rbx from its virtio
   capabilities (at most 48 followed), and vpci_msix with its MSI-X
   capability's offset (0: none); CF set without a common config. */
vpci_caps:
        pushq %r13
        pushq %r14
        pushq %r15
        movl $4, %esi
        call pci_read32
        orl $6, %eax                    /* memory space, bus master */
        movl %eax, %ecx
        call pci_write32
        movl $0x3c, %esi
        call pci_read32
        movzbl %al, %eax
        movl %eax, V_IRQ(%rbx)
        movq $0, V_COMMON(%rbx)
        movl $0, vpci_msix(%rip)
        movl $0x34, %esi
        call pci_read32
        movzbl %al, %r13d               /* r13: capability */
        movl $48, %r15d                 /* r15: capabilities left to follow */
1:      testl %r13d, %r13d
        jz 5f
        decl %r15d
        jz 5f
        andl $0xfc, %r13d
        movl %r13d, %esi
        call pci_read32
        movl %eax, %r14d                /* r14: id, next, len, type */
        cmpb $0x11, %al                 /* MSI-X: its offset for the caller */
        jne 11f
        movl %r13d, vpci_msix(%rip)
11:     cmpb $0x09, %al
        jne 4f
        leal 4(%r13), %esi
        call pci_read32
        movzbl %al, %ecx                /* BAR index */
        cmpl $5, %ecx
        ja 4f
        leal 8(%r13), %esi
        call pci_read32
        movl %eax, %r8d                 /* r8: offset in the BAR */
        leal 0x10(,%rcx,4), %esi
        call pci_read32
        movl %eax, %r9d
        andl $-16, %r9d
        testb $4, %al                   /* 64-bit BAR: high half next */
        jz 2f
        addl $4, %esi
        call pci_read32
        shlq $32, %rax
        orq %rax, %r9
2:      addq %r8, %r9                   /* r9: the region's address */
        movl %r14d, %eax
        shrl $24, %eax                  /* cfg_type */
        cmpl $1, %eax
        jne 3f
        movq %r9, V_COMMON(%rbx)
3:      cmpl $3, %eax
        jne 31f
        movq %r9, V_ISR(%rbx)
31:     cmpl $4, %eax
        jne 32f
        movq %r9, V_DEVCFG(%rbx)
32:     cmpl $2, %eax
        jne 4f
        movq %r9, V_NOTIFY(%rbx)
        leal 16(%r13), %esi
        call pci_read32
        movl %eax, V_MULT(%rbx)
4:      movl %r14d, %eax
        shrl $8, %eax
        movzbl %al, %r13d
        jmp 1b
5:      popq %r15
        popq %r14
        popq %r13
        cmpq $1, V_COMMON(%rbx)         /* CF: none */
        ret

/* vpci_start: resets the device of record rbx, acknowledges it, and
   accepts VERSION_1 and those of the low 32 feature bits in eax that it
   offers (returned in eax); CF set if it is not a VERSION_1 device or
   refuses FEATURES_OK. */
vpci_start:
        pushq %rdx
        movl %eax, %edx
        movq V_COMMON(%rbx), %rdi
        movb $0, 0x14(%rdi)             /* reset */
        movb $1, 0x14(%rdi)             /* ACKNOWLEDGE */
        movb $3, 0x14(%rdi)             /* DRIVER */
        movl $1, 0x00(%rdi)
        movl 0x04(%rdi), %eax
        testl $1, %eax                  /* VERSION_1 offered? */
        jz 1f
        movl $0, 0x00(%rdi)
        andl 0x04(%rdi), %edx           /* wanted and offered */
        movl $0, 0x08(%rdi)
        movl %edx, 0x0c(%rdi)
        movl $1, 0x08(%rdi)
        movl $1, 0x0c(%rdi)             /* VERSION_1 */
        movb $0x0b, 0x14(%rdi)          /* FEATURES_OK */
        movb 0x14(%rdi), %al
        testb $8, %al
        jz 1f
        movl %edx, %eax
        popq %rdx
        clc
        ret
1:      popq %rdx
        stc
        ret

/* vpci_queue: queue ecx of record rbx in the page at rax, VQ_SIZE
   entries, enabled; rax = its notification address. */
vpci_queue:
        pushq %rdx
        movq V_COMMON(%rbx), %rdi
        movw %cx, 0x16(%rdi)            /* queue_select */
        movw $VQ_SIZE, 0x18(%rdi)
        movl %eax, 0x20(%rdi)           /* descriptors */
        movl $0, 0x24(%rdi)
        leaq 0x100(%rax), %rdx
        movl %edx, 0x28(%rdi)           /* available ring */
        movl $0, 0x2c(%rdi)
        leaq 0x200(%rax), %rdx
        movl %edx, 0x30(%rdi)           /* used ring */
        movl $0, 0x34(%rdi)
        movzwl 0x1e(%rdi), %eax         /* queue_notify_off */
        imull V_MULT(%rbx), %eax
        addq V_NOTIFY(%rbx), %rax
        movw $1, 0x1c(%rdi)             /* queue_enable */
        popq %rdx
        ret

/* vq_push: makes the chain at descriptor edx of the queue page rdi
   available; r8 points at the driver's 16-bit available index, which it
   advances. Returns the new index in eax (the caller notifies). */
vq_push:
        movzwl (%r8), %eax
        movl %eax, %ecx
        andl $VQ_SIZE - 1, %ecx
        movw %dx, 0x104(%rdi,%rcx,2)    /* avail.ring[idx] = head */
        incl %eax
        movw %ax, (%r8)
        mfence
        movw %ax, 0x102(%rdi)           /* avail.idx */
        mfence
        ret
/* ---------------- end of the virtio-pci transport ---------------- */

/* ================= virtio-blk: PCI scan and a polling driver ============
 * At boot: maps the 32-bit PCI hole (3-4 GiB, uncached), scans bus 0
 * through 0xCF8/0xCFC for virtio-blk (1af4:1042) functions, sets each up
 * through its common-cfg capability (VERSION_1, FLUSH and EVENT_IDX when
 * offered, one queue of BQ_SIZE) and prints "BLK vd<x> SECTORS=<n>".
 * Requests are three descriptors (header, data, status) made available,
 * a notify write if the device asked for one (EVENT_IDX: avail_event;
 * else the used ring's NO_NOTIFY flag), then polling the used ring
 * (bounded). Completions are polled, not waited for; the driver still
 * asks for an interrupt at the next completion each time it starts to
 * poll (EVENT_IDX: used_event), as a driver that slept would, so the
 * interrupts taken show how the device batches them. Shell words (D:
 * disk index, 0 = vda):
 *   blkread D S       BLKREAD STATUS=<s> SUM=<FNV-1a 32 of the 512 bytes, hex>
 *   blkwrite D S B    fills sector S with byte B: BLKWRITE STATUS=<s>
 *   blkflush D        BLKFLUSH STATUS=<s>
 *   blkid D           BLKID STATUS=<s> SERIAL=<get-id bytes up to NUL>
 *   blkbad D          a read whose data descriptor lies outside guest RAM:
 *                     BLKBAD STATUS=<s>
 *   blkbench D N      N 4 KiB random reads, then N 4 KiB random writes,
 *                     BQ_DEPTH of them in flight (as fio's iodepth):
 *                     BLKBENCH N=<n> ERRORS=<e> CYCLES=<TSC cycles>
 * A status of 255 means the device did not answer in time.
 */
        .set PCI_ADDR, 0xcf8
        .set PCI_DATA, 0xcfc
        .set VQ_SIZE, 8
        .set MAX_BLK, 4
        .set BLK_STRIDE, 80
        .set D_COMMON, V_COMMON         /* a transport record first */
        .set D_NOTIFY, V_NOTIFY         /* queue 0's, once set up */
        .set D_DEVCFG, V_DEVCFG
        .set D_CAP, V_SIZE
        .set D_AVAIL, V_SIZE + 8        /* next avail idx (16-bit) */
        .set D_QUEUE, V_SIZE + 16       /* the queue's page */
        .set D_MSIX, V_SIZE + 24        /* MSI-X capability offset (32-bit) */
        .set D_MSIXON, V_SIZE + 28      /* MSI-X in use (byte) */
        .set D_EVIDX, V_SIZE + 29       /* EVENT_IDX negotiated (byte) */
        .set BAD_ADDR, 0xf0000000       /* in the PCI hole: no RAM */
        .set F_EVENT_IDX, 0x20000000    /* VIRTIO_F_EVENT_IDX (bit 29) */
        .set BQ_SIZE, 64                /* the request queue's entries */
        .set BQ_AVAIL, 0x400            /* its available ring in the page */
        .set BQ_USED, 0x800             /* its used ring */
        .set BQ_USED_EVENT, BQ_AVAIL + 4 + 2 * BQ_SIZE
        .set BQ_AVAIL_EVENT, BQ_USED + 4 + 8 * BQ_SIZE
        .set BQ_DEPTH, 16               /* blkbench: requests in flight */
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
        movl $0x10421af4, %edx
        call pci_find
        jc .Lscan_done
        movl %edi, %r12d
        call blk_probe
        incl %r12d
        jmp .Lscan
.Lscan_done:
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
        call vpci_caps
        jc .Lprobe_out
        movl vpci_msix(%rip), %eax      /* MSI-X: the MSI-X block uses it */
        movl %eax, D_MSIX(%rbx)
        movl $F_EVENT_IDX | 0x200, %eax /* EVENT_IDX, FLUSH */
        call vpci_start
        jc .Lprobe_out
        testl $F_EVENT_IDX, %eax
        setnz D_EVIDX(%rbx)
        movl blk_count(%rip), %eax
        shll $12, %eax
        leaq blk_queues(%rip), %rcx
        addq %rcx, %rax
        movq %rax, D_QUEUE(%rbx)
        movq D_COMMON(%rbx), %rdi
        call blk_msix_setup             /* vectors before queue_enable */
        call blk_vq
        movq %rax, D_NOTIFY(%rbx)       /* from now on: queue 0's */
        movq D_COMMON(%rbx), %rdi
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
        movzwl D_AVAIL(%rbx), %ecx      /* the used index too: one at a time */
        movl %ecx, %eax
        andl $BQ_SIZE - 1, %eax
        movw $0, BQ_AVAIL + 4(%rdi,%rax,2)  /* head 0 */
        movw %cx, BQ_USED_EVENT(%rdi)   /* an interrupt at its completion */
        leal 1(%rcx), %eax
        movw %ax, D_AVAIL(%rbx)
        call blk_publish
        movl $POLL_BOUND, %ecx
2:      movzwl BQ_USED + 2(%rdi), %eax  /* used.idx */
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

/* blk_vq: queue 0 of disk rbx in the page at rax (BQ_SIZE entries, the
   rings at BQ_AVAIL and BQ_USED), enabled; rax = its notification address. */
blk_vq:
        pushq %rdx
        movq V_COMMON(%rbx), %rdi
        movw $0, 0x16(%rdi)             /* queue_select */
        movw $BQ_SIZE, 0x18(%rdi)
        movl %eax, 0x20(%rdi)           /* descriptors */
        movl $0, 0x24(%rdi)
        leaq BQ_AVAIL(%rax), %rdx
        movl %edx, 0x28(%rdi)           /* available ring */
        movl $0, 0x2c(%rdi)
        leaq BQ_USED(%rax), %rdx
        movl %edx, 0x30(%rdi)           /* used ring */
        movl $0, 0x34(%rdi)
        movzwl 0x1e(%rdi), %eax         /* queue_notify_off */
        imull V_MULT(%rbx), %eax
        addq V_NOTIFY(%rbx), %rax
        movw $1, 0x1c(%rdi)             /* queue_enable */
        popq %rdx
        ret

/* blk_publish: makes disk rbx's available index (D_AVAIL; cx before the
   chains just added) visible in its queue page rdi, and notifies the
   device if it asked: with EVENT_IDX when avail_event lies in [cx, new)
   (vring_need_event), else unless the used ring says NO_NOTIFY.
   Clobbers rax, rcx, rdx. */
blk_publish:
        movzwl D_AVAIL(%rbx), %eax
        movw %ax, BQ_AVAIL + 2(%rdi)    /* avail.idx */
        mfence                          /* before reading the device's side */
        cmpb $0, D_EVIDX(%rbx)
        je 1f
        movl %eax, %edx
        subw BQ_AVAIL_EVENT(%rdi), %dx
        decw %dx                        /* new - avail_event - 1 */
        subw %cx, %ax                   /* new - old */
        cmpw %ax, %dx
        jb 2f
        ret
1:      testw $1, BQ_USED(%rdi)         /* VRING_USED_F_NO_NOTIFY */
        jnz 3f
2:      movq D_NOTIFY(%rbx), %rax
        movw $0, (%rax)                 /* notify queue 0 */
3:      ret

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
   random 4 KiB blocks below r15 on disk rbx, BQ_DEPTH in flight, each in
   a slot of its own (descriptors 3s..3s+2, a header, a data page and a
   status byte); counts errors (and requests never answered) in r13. */
blk_bench_pass:
        pushq %rbp
        pushq %r14
        movl %eax, %ebp                 /* ebp: type */
        movq D_QUEUE(%rbx), %rdi
        xorl %ecx, %ecx                 /* the slots' descriptors, all free */
1:      movl %ecx, %eax
        imull $48, %eax
        leaq (%rdi,%rax), %rsi          /* rsi: descriptor 3s */
        movl %ecx, %eax
        shll $4, %eax
        leaq bench_hdr(%rip), %rdx
        addq %rax, %rdx
        movl %ebp, (%rdx)               /* header: type, ioprio 0 */
        movl $0, 4(%rdx)
        movq %rdx, 0(%rsi)
        movl $16, 8(%rsi)
        movw $1, 12(%rsi)               /* NEXT */
        leal 1(%rcx,%rcx,2), %eax
        movw %ax, 14(%rsi)
        movl %ecx, %eax
        shll $12, %eax
        leaq bench_data(%rip), %rdx
        addq %rax, %rdx
        movq %rdx, 16(%rsi)
        movl $4096, 24(%rsi)
        movl %ebp, %eax
        xorl $1, %eax
        leal 1(,%rax,2), %eax           /* NEXT, and WRITE for reads */
        movw %ax, 28(%rsi)
        leal 2(%rcx,%rcx,2), %eax
        movw %ax, 30(%rsi)
        leaq bench_status(%rip), %rdx
        addq %rcx, %rdx
        movq %rdx, 32(%rsi)
        movl $1, 40(%rsi)
        movw $2, 44(%rsi)               /* WRITE */
        movw $0, 46(%rsi)
        leaq bench_free(%rip), %rdx
        movb %cl, (%rdx,%rcx)
        incl %ecx
        cmpl $BQ_DEPTH, %ecx
        jb 1b
        movl $BQ_DEPTH, %r11d           /* r11: free slots */
        movq %r12, %r8                  /* r8: requests left to issue */
        xorl %r9d, %r9d                 /* r9: in flight */
        movzwl BQ_USED + 2(%rdi), %r10d /* r10: the next used entry to reap */
.Lbp_fill:
        movzwl D_AVAIL(%rbx), %r14d     /* r14: the index before this batch */
2:      testl %r11d, %r11d
        jz 3f
        testq %r8, %r8
        jz 3f
        decl %r11d
        leaq bench_free(%rip), %rsi
        movzbl (%rsi,%r11), %esi        /* esi: the slot */
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
        movl %esi, %eax
        shll $4, %eax
        leaq bench_hdr(%rip), %rcx
        movq %rdx, 8(%rcx,%rax)
        leaq bench_status(%rip), %rcx
        movb $0xee, (%rcx,%rsi)
        movzwl D_AVAIL(%rbx), %eax
        movl %eax, %ecx
        andl $BQ_SIZE - 1, %ecx
        leal (%rsi,%rsi,2), %edx        /* head: descriptor 3s */
        movw %dx, BQ_AVAIL + 4(%rdi,%rcx,2)
        incl %eax
        movw %ax, D_AVAIL(%rbx)
        decq %r8
        incl %r9d
        jmp 2b
3:      testl %r9d, %r9d
        jz .Lbp_out
        movw %r10w, BQ_USED_EVENT(%rdi) /* an interrupt at the next completion */
        cmpw D_AVAIL(%rbx), %r14w
        je 4f
        movl %r14d, %ecx
        call blk_publish
4:      movl $POLL_BOUND, %ecx
5:      cmpw BQ_USED + 2(%rdi), %r10w   /* used.idx */
        jne 6f
        decl %ecx
        jnz 5b
        addq %r9, %r13                  /* no answer in time: all lost */
        jmp .Lbp_out
6:      movl %r10d, %eax                /* reap every used entry */
        andl $BQ_SIZE - 1, %eax
        movl BQ_USED + 4(%rdi,%rax,8), %eax  /* its id: descriptor 3s */
        xorl %edx, %edx
        movl $3, %ecx
        divl %ecx
        cmpl $BQ_DEPTH, %eax
        jae 7f                          /* not a head we gave: lost */
        leaq bench_status(%rip), %rcx
        cmpb $0, (%rcx,%rax)
        je 8f
7:      incq %r13
        cmpl $BQ_DEPTH, %eax
        jae 9f
8:      leaq bench_free(%rip), %rcx
        movb %al, (%rcx,%r11)
        incl %r11d
9:      decl %r9d
        incl %r10d
        cmpw BQ_USED + 2(%rdi), %r10w
        jne 6b
        jmp .Lbp_fill
.Lbp_out:
        addq %r8, %r13                  /* never issued: slots lost */
        popq %r14
        popq %rbp
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
        .align 4096
bench_data: .fill 4096 * BQ_DEPTH, 1, 0
bench_hdr:  .fill 16 * BQ_DEPTH, 1, 0
bench_status: .fill BQ_DEPTH, 1, 0
bench_free: .fill BQ_DEPTH, 1, 0
/* end of the virtio-blk section's data */
/* the MSI-X block's data */
msix_irqs:   .long 0
        .balign 4
vpci_msix:   .long 0                 /* vpci_caps: the MSI-X capability */
msix_off:    .byte 0
lapic_ready: .byte 0
lapic_x2:    .byte 0
/* end of the MSI-X block's data */

