/*
 * 32-bit Arm variant of check_hidden_ref.c: GCC reaches a function's address
 * with MOVW/MOVT (relocated), so the hidden reference is written by hand:
 * `adr r0, handler` in the same section is resolved by the assembler.
 */
    .syntax unified
    .arm
    .text
    .align 2
    .type handler, %function
handler:
    mov r1, r0
    ldr r0, =handler_msg
    b printk
    .size handler, . - handler

    .global install_handler
    .type install_handler, %function
install_handler:
    adr r0, handler
    b register_callback
    .size install_handler, . - install_handler
    .ltorg

    .section .rodata.handler_msg, "a", %progbits
handler_msg:
    .asciz "new handler %d\n"

    .section .rodata.lp_handler_name, "a", %progbits
lp_handler_name:
    .asciz "common/check_hidden_ref.c#handler"

    .section .livepatch.funcs, "aw", %progbits
    .align 2
lp_handler:
    .word lp_handler_name       @ name
    .word handler               @ new_addr
    .word 0                     @ old_addr
    .word 0, 32                 @ new_size, old_size
    .byte 2                     @ version
    .space 92 - 21
    .section .note.GNU-stack, "", %progbits
