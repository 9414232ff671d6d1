/* A tiny stack machine. Operations are dispatched through a constant table
 * of function pointers (in .rdata, so every entry carries a base relocation);
 * the operation functions are reached only through that table. */
#include "hp.h"

#define VM_STACK 16
#define VM_MAX_STEPS 1024

typedef struct hp_vm {
    i32 stack[VM_STACK];
    u32 sp;
    u32 pc;
    u32 steps;
    const u8 *code;
    size_t n;
} hp_vm;

typedef int (*vm_op_fn)(hp_vm *vm);

static HP_NOINLINE int vm_push(hp_vm *vm, i32 v)
{
    if (vm->sp >= VM_STACK)
        return HP_E_OVERFLOW;
    vm->stack[vm->sp++] = v;
    return HP_OK;
}

static HP_NOINLINE int vm_pop2(hp_vm *vm, i32 *a, i32 *b)
{
    if (vm->sp < 2)
        return HP_E_STATE;
    *b = vm->stack[--vm->sp];
    *a = vm->stack[--vm->sp];
    return HP_OK;
}

static HP_NOINLINE int op_lit(hp_vm *vm)
{
    if (vm->pc >= vm->n)
        return HP_E_TRUNC;
    return vm_push(vm, (i32)(signed char)vm->code[vm->pc++]);
}

static HP_NOINLINE int op_add(hp_vm *vm)
{
    i32 a, b;
    int rc = vm_pop2(vm, &a, &b);
    return rc < 0 ? rc : vm_push(vm, (i32)((u32)a + (u32)b));
}

static HP_NOINLINE int op_sub(hp_vm *vm)
{
    i32 a, b;
    int rc = vm_pop2(vm, &a, &b);
    return rc < 0 ? rc : vm_push(vm, (i32)((u32)a - (u32)b));
}

static HP_NOINLINE int op_mul(hp_vm *vm)
{
    i32 a, b;
    int rc = vm_pop2(vm, &a, &b);
    return rc < 0 ? rc : vm_push(vm, (i32)((u32)a * (u32)b));
}

static HP_NOINLINE int op_dup(hp_vm *vm)
{
    if (vm->sp == 0)
        return HP_E_STATE;
    return vm_push(vm, vm->stack[vm->sp - 1]);
}

static HP_NOINLINE int op_swap(hp_vm *vm)
{
    i32 t;
    if (vm->sp < 2)
        return HP_E_STATE;
    t = vm->stack[vm->sp - 1];
    vm->stack[vm->sp - 1] = vm->stack[vm->sp - 2];
    vm->stack[vm->sp - 2] = t;
    return HP_OK;
}

static HP_NOINLINE int op_crc(hp_vm *vm)
{
    if (vm->sp == 0)
        return HP_E_STATE;
    vm->stack[vm->sp - 1] = (i32)hp_crc32(&vm->stack[vm->sp - 1], 4);
    return HP_OK;
}

/* Jumps back by imm bytes while the top of stack is non-zero (pops it). */
static HP_NOINLINE int op_loop(hp_vm *vm)
{
    u32 back;
    if (vm->pc >= vm->n || vm->sp == 0)
        return HP_E_STATE;
    back = vm->code[vm->pc++];
    if (vm->stack[--vm->sp] != 0) {
        if (back > vm->pc)
            return HP_E_RANGE;
        vm->pc -= back;
    }
    return HP_OK;
}

static vm_op_fn const g_vm_ops[8] = {
    op_lit, op_add, op_sub, op_mul, op_dup, op_swap, op_crc, op_loop
};

/* Runs code; returns the number of steps executed, result = top of stack. */
HP_API int hp_vm_run(const u8 *code, size_t n, i32 *result)
{
    hp_vm vm;
    int rc;

    memset(&vm, 0, sizeof(vm));
    vm.code = code;
    vm.n = n;
    while (vm.pc < n) {
        u32 op = code[vm.pc++];
        if (op >= sizeof(g_vm_ops) / sizeof(g_vm_ops[0]))
            return hp_fail(HP_E_SYNTAX, "vm: bad opcode");
        if (++vm.steps > VM_MAX_STEPS)
            return hp_fail(HP_E_STATE, "vm: step limit");
        rc = g_vm_ops[op](&vm);
        if (rc < 0)
            return hp_fail(rc, "vm: operation failed");
    }
    if (vm.sp == 0)
        return HP_E_STATE;
    if (result != NULL)
        *result = vm.stack[vm.sp - 1];
    return (int)vm.steps;
}
