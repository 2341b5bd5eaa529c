# bcryptprimitives!ProcessPrng for the Wine test prefix only: Wine 8 has no bcryptprimitives.dll, and
# Rust-built wheels (pydantic-core) import ProcessPrng from it (Windows 10+ has it; it is never shipped).
# Implemented over advapi32!SystemFunction036 (RtlGenRandom), asked in chunks of at most 2^31 bytes.
    .text
    .globl ProcessPrng
ProcessPrng:
    push %rsi
    push %rdi
    sub $40, %rsp
    mov %rcx, %rsi          # data
    mov %rdx, %rdi          # remaining size
1:  test %rdi, %rdi
    jz 2f
    mov $0x80000000, %rdx
    cmp %rdx, %rdi
    cmovb %rdi, %rdx        # chunk = min(remaining, 2^31)
    mov %rsi, %rcx
    sub %rdx, %rdi
    add %rdx, %rsi
    call *__imp_SystemFunction036(%rip)
    jmp 1b
2:  mov $1, %eax
    add $40, %rsp
    pop %rdi
    pop %rsi
    ret
