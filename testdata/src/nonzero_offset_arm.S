/*
 * 32-bit Arm variant of nonzero_offset.c. GAS keeps relocations against Arm
 * *function* symbols, so to get section-symbol references (implicit addend
 * k in the place) second_fn is an untyped local label here. Each REL type
 * that can reference it is present: ABS32, REL32, CALL, JUMP24, MOVW/MOVT.
 */
    .syntax unified
    .arm
    .text
    .align 2
    .type first_fn, %function
first_fn:
    add r0, r0, #1
    bx lr
    .size first_fn, . - first_fn
    nop
    nop
second_fn:                      @ offset 16 in .text, no symbol type
    mov r1, #7
    mul r0, r0, r1
    bx lr

    .section .text.install_second, "ax", %progbits
    .align 2
    .global install_second
    .type install_second, %function
install_second:
    push {r4, lr}
    movw r0, #:lower16:second_fn
    movt r0, #:upper16:second_fn
    bl register_callback
    bl second_fn
    pop {r4, lr}
    b second_fn
    .size install_second, . - install_second

    .section .data.rel.ro.offset_table, "aw", %progbits
    .align 2
    .global offset_table
offset_table:
    .word first_fn
    .word second_fn
    .word second_fn - .

    .section .rodata.lp_second_name, "a", %progbits
lp_second_name:
    .asciz "common/nonzero_offset.c#second_fn"

    .section .livepatch.funcs, "aw", %progbits
    .align 2
lp_second:
    .word lp_second_name        @ name
    .word second_fn             @ new_addr: .text + 16
    .word 0                     @ old_addr
    .word 0, 32                 @ new_size, old_size
    .byte 2                     @ version
    .space 92 - 21
    .section .note.GNU-stack, "", %progbits
