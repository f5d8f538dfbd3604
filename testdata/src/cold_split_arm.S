/*
 * 32-bit Arm variant of cold_split.c. GCC does not partition hot/cold code
 * on Arm ("-freorder-blocks-and-partition not supported on this
 * architecture"), so this is GCC 12's -O2 output for cold_split.c with the
 * split it makes on x86-64 and AArch64 written out: the unlikely path moves
 * to check_value.cold in .text.unlikely.check_value and ends with `b .L3`,
 * a JUMP24 against the .text.check_value section symbol at the
 * continuation's offset. That jump-back points into the new body and must
 * stay; install_checker's MOVW/MOVT of check_value's entry must move.
 */
    .syntax unified
    .arm
    .file "cold_split_arm.S"

    .section .rodata.report_failure.str1.4, "aMS", %progbits, 1
    .align 2
.LC0:
    .asciz "failure %d\n"

    .section .text.unlikely.report_failure, "ax", %progbits
    .align 2
    .global report_failure
    .hidden report_failure
    .type report_failure, %function
report_failure:
    mov r1, r0
    movw r0, #:lower16:.LC0
    movt r0, #:upper16:.LC0
    b printk
    .size report_failure, . - report_failure

    .section .rodata.check_value.str1.4, "aMS", %progbits, 1
    .align 2
.LC1:
    .asciz "checked %d\n"

    .section .text.check_value, "ax", %progbits
    .align 2
    .global check_value
    .hidden check_value
    .type check_value, %function
check_value:
    cmp r0, #0
    push {r4, r5, r6, lr}
    lslge r5, r0, #1
    blt check_value.cold            @ the unlikely path, in another section
.L3:                                @ the continuation the cold part jumps back to
    ldr r3, .L10
    mov r0, r5
    add ip, r3, #32
.L4:
    ldr r2, [r3, #4]!
    add r2, r2, r0
    cmp r3, ip
    add r0, r0, #1
    str r2, [r3]
    bne .L4
    mov r1, r5
    movw r0, #:lower16:.LC1
    movt r0, #:upper16:.LC1
    bl printk
    mov r0, r5
    pop {r4, r5, r6, pc}
    .align 2
.L10:
    .word hv_acc - 4
    .size check_value, . - check_value

    .section .text.unlikely.check_value, "ax", %progbits
    .align 2
    .type check_value.cold, %function
check_value.cold:
    mov r4, r0
    bl report_failure
    add r0, r4, #1
    bl report_failure
    movw r3, #:lower16:hv_flag
    movt r3, #:upper16:hv_flag
    ldr r5, [r3]
    b .L3                           @ back into check_value's body
    .size check_value.cold, . - check_value.cold

    .section .text.install_checker, "ax", %progbits
    .align 2
    .global install_checker
    .hidden install_checker
    .type install_checker, %function
install_checker:
    movw r3, #:lower16:hv_checker
    movt r3, #:upper16:hv_checker
    movw r2, #:lower16:check_value
    movt r2, #:upper16:check_value
    str r2, [r3]
    bx lr
    .size install_checker, . - install_checker

    .section .rodata.lp_check_value_name, "a", %progbits
    .align 2
lp_check_value_name:
    .asciz "check_value"

    .section .livepatch.funcs, "aw", %progbits
    .align 2
    .global lp_check_value
    .hidden lp_check_value
    .type lp_check_value, %object
lp_check_value:
    .word lp_check_value_name       @ name
    .word check_value               @ new_addr
    .word 0                         @ old_addr
    .word 0, 32                     @ new_size, old_size
    .byte 2                         @ version
    .space 92 - 21
    .size lp_check_value, 92

    .hidden hv_checker
    .hidden hv_acc
    .hidden hv_flag
    .hidden printk
    .section .note.GNU-stack, "", %progbits
