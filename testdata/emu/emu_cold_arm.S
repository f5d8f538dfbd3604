/*
 * 32-bit Arm version of emu_cold.c: GCC does not partition hot/cold code on
 * Arm, so the split it makes elsewhere is written out here. hv_checked.cold
 * (.text.unlikely.hv_checked) ends with `b .Lcontinue`, a JUMP24 against the
 * .text.hv_checked section symbol with the continuation's offset: a reference
 * into the new body that must stay there.
 *
 * Calls go through movw/movt + blx (as with -mlong-calls, which the C
 * payloads use on Arm): Xen's arm32 R_ARM_CALL/JUMP24 handling masks the
 * word offset with 0x00FFFFFE and sends a branch an odd number of words away
 * 4 bytes short. The two B instructions below are an even number of words
 * apart from their targets once loaded (the `nop` padding sees to it, and the
 * emulation test checks that no branch is misdirected).
 */
    .syntax unified
    .arm

    .section .text.unlikely.lp_slow, "ax", %progbits
    .align 2
    .global lp_slow
    .hidden lp_slow
    .type lp_slow, %function
lp_slow:
    mov r3, #11
    mul r0, r3, r0
    bx lr
    .size lp_slow, . - lp_slow

    .section .text.hv_checked, "ax", %progbits
    .align 2
    .global hv_checked
    .hidden hv_checked
    .type hv_checked, %function
hv_checked:
    push {r4, r5, r6, lr}
    mov r4, r0, lsl #1              @ r = 2 * x
    cmp r0, #0
    blt hv_checked.cold             @ the unlikely path
.Lcontinue:
    movw r1, #:lower16:hv_weights
    movt r1, #:upper16:hv_weights
    movw r2, #:lower16:hv_acc
    movt r2, #:upper16:hv_acc
    mov r3, #0
1:  ldr r5, [r1, r3, lsl #2]        @ hv_acc[i] += r + hv_weights[i]
    ldr r6, [r2, r3, lsl #2]
    add r5, r5, r4
    add r6, r6, r5
    str r6, [r2, r3, lsl #2]
    add r3, r3, #1
    cmp r3, #8
    bne 1b
    mov r0, r4
    movw r3, #:lower16:hv_note
    movt r3, #:upper16:hv_note
    blx r3                          @ hv_note(r)
    movw r0, #9000
    add r0, r4, r0                  @ return r + 9000
    pop {r4, r5, r6, pc}
    nop                             @ padding: keeps both B offsets an even number of words
    .size hv_checked, . - hv_checked

    .section .text.unlikely.hv_checked, "ax", %progbits
    .align 2
    .type hv_checked.cold, %function
hv_checked.cold:
    nop                             @ padding, as above
    mov r5, r0
    movw r3, #:lower16:lp_slow
    movt r3, #:upper16:lp_slow
    blx r3                          @ lp_slow(x)
    mov r4, r0
    add r0, r5, #1
    movw r3, #:lower16:lp_slow
    movt r3, #:upper16:lp_slow
    blx r3                          @ lp_slow(x + 1)
    add r4, r4, r0
    movw r3, #:lower16:hv_bias
    movt r3, #:upper16:hv_bias
    ldr r3, [r3]
    add r4, r4, r3                  @ r += hv_bias
    b .Lcontinue                    @ back into the new body
    .size hv_checked.cold, . - hv_checked.cold

    .section .text.lp_load, "ax", %progbits
    .align 2
    .type lp_load, %function
lp_load:
    push {r4, lr}
    movw r0, #:lower16:hv_checked
    movt r0, #:upper16:hv_checked
    movw r3, #:lower16:register_handler
    movt r3, #:upper16:register_handler
    blx r3                          @ register_handler(hv_checked)
    pop {r4, pc}
    .size lp_load, . - lp_load

    .section .livepatch.hooks.load, "a", %progbits
    .align 2
lp_load_hook_ptr:
    .word lp_load

    .section .rodata.lp_hv_checked_name, "a", %progbits
lp_hv_checked_name:
    .asciz "hv_checked"

    .section .livepatch.funcs, "aw", %progbits
    .align 2
    .global lp_hv_checked
lp_hv_checked:
    .word lp_hv_checked_name        @ name
    .word hv_checked                @ new_addr
    .word 0                         @ old_addr (Xen looks the name up)
    .word 0, 32                     @ new_size, old_size
    .byte 2                         @ version
    .space 92 - 21

    .section .note.GNU-stack, "", %progbits
