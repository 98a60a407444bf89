//! Gibsey glyph VM: a small stack machine that runs one glyph's program against the event that
//! triggered it and returns the effects it asks for. It does no I/O; the host publishes effects.
//!
//! TIGER_STYLE: every buffer is sized once by the host's Config at creation and never grows; the
//! interpreter and the verifier are loops, never recursion; every failure is a returned status
//! (with a pc or byte offset), never a panic; invariants the verifier proved are asserted.
//! See ISA.md for the instruction set and the file format.

const std = @import("std");
const isa = @import("isa.zig");
const verifier = @import("verify.zig");
const assert = std.debug.assert;
const Status = isa.Status;
const Op = isa.Op;
const Effect = isa.Effect;

pub const abi_version: u32 = 1;

/// Sizes chosen by the host at start-up. Bounds are checked in `Vm.init`.
pub const Config = extern struct {
    stack_cap: u32,
    locals_cap: u32,
    effects_cap: u32,
    code_cap: u32,
};

pub const config_default: Config = .{
    .stack_cap = 256,
    .locals_cap = 64,
    .effects_cap = 64,
    .code_cap = 4096,
};

/// The triggering event. Actors and nodes are small integers the host maps to names.
pub const Trigger = extern struct {
    symbol: u32,
    rotation: u32,
    actor: i64,
    node: i64,
    arg: i64,
};

pub const RunResult = extern struct {
    status: i32,
    /// Code offset of the instruction that halted or failed (run-time statuses).
    pc: u32,
    /// File offset of the offending byte (verifier statuses); 0 otherwise.
    offset: u32,
    effect_count: u32,
    /// Instructions started, including one that failed; an instruction refused for lack of fuel
    /// is not counted, so fuel_used <= fuel always.
    fuel_used: u64,
    stack_depth: u32,
    n_locals: u32,
    effects: [*]const Effect,
    stack: [*]const i64,
    locals: [*]const i64,
};

pub const Vm = struct {
    config: Config,
    stack: []i64,
    locals: []i64,
    effects: []Effect,
    scratch: verifier.Scratch,

    pub fn config_valid(config: Config) bool {
        return config.stack_cap >= 1 and config.stack_cap <= 65535 and
            config.locals_cap <= isa.locals_max and
            config.effects_cap >= 1 and config.effects_cap <= 65536 and
            config.code_cap >= 1 and config.code_cap <= isa.code_len_max;
    }

    /// The only allocation the VM ever makes.
    pub fn init(allocator: std.mem.Allocator, config: Config) !Vm {
        if (!config_valid(config)) return error.InvalidConfig;
        const stack = try allocator.alloc(i64, config.stack_cap);
        errdefer allocator.free(stack);
        // Zero-length slices are fine for locals_cap == 0.
        const locals = try allocator.alloc(i64, config.locals_cap);
        errdefer allocator.free(locals);
        const effects = try allocator.alloc(Effect, config.effects_cap);
        errdefer allocator.free(effects);
        const depth = try allocator.alloc(u32, config.code_cap);
        errdefer allocator.free(depth);
        const boundary = try allocator.alloc(bool, config.code_cap);
        errdefer allocator.free(boundary);
        const worklist = try allocator.alloc(u32, config.code_cap);
        return .{
            .config = config,
            .stack = stack,
            .locals = locals,
            .effects = effects,
            .scratch = .{ .depth = depth, .boundary = boundary, .worklist = worklist },
        };
    }

    pub fn deinit(vm: *Vm, allocator: std.mem.Allocator) void {
        allocator.free(vm.stack);
        allocator.free(vm.locals);
        allocator.free(vm.effects);
        allocator.free(vm.scratch.depth);
        allocator.free(vm.scratch.boundary);
        allocator.free(vm.scratch.worklist);
        vm.* = undefined;
    }

    fn limits(vm: *const Vm) verifier.Limits {
        return .{
            .stack_cap = vm.config.stack_cap,
            .locals_cap = vm.config.locals_cap,
            .code_cap = vm.config.code_cap,
        };
    }

    pub fn verify(vm: *Vm, bytes: []const u8) verifier.Result {
        return verifier.verify(&vm.scratch, bytes, vm.limits());
    }

    fn result(vm: *const Vm, status: Status, pc: u32, offset: u32, fuel_used: u64, sp: u32, n_eff: u32, n_locals: u32) RunResult {
        return .{
            .status = @intFromEnum(status),
            .pc = pc,
            .offset = offset,
            .effect_count = n_eff,
            .fuel_used = fuel_used,
            .stack_depth = sp,
            .n_locals = n_locals,
            .effects = vm.effects.ptr,
            .stack = vm.stack.ptr,
            .locals = vm.locals.ptr,
        };
    }

    /// Verifies, then runs. There is no way to run bytecode that has not just been verified,
    /// so a host bug cannot feed the interpreter unchecked bytes.
    pub fn run(vm: *Vm, bytes: []const u8, trigger: Trigger, fuel: u64) RunResult {
        const checked = vm.verify(bytes);
        if (checked.status != .ok) return vm.result(checked.status, 0, checked.offset, 0, 0, 0, 0);
        const prog = checked.program;
        // Cleared before anything else so no result ever shows a previous run's locals.
        @memset(vm.locals[0..prog.n_locals], 0);
        if (trigger.symbol >= isa.symbols_count or trigger.rotation >= isa.rotations_count) {
            return vm.result(.bad_trigger, 0, 0, 0, 0, 0, prog.n_locals);
        }
        return vm.execute(bytes, prog, trigger, fuel);
    }

    fn execute(vm: *Vm, bytes: []const u8, prog: verifier.Program, trigger: Trigger, fuel: u64) RunResult {
        const code = bytes[prog.code_start..][0..prog.code_len];
        const stack = vm.stack[0..prog.max_stack];
        const locals = vm.locals[0..prog.n_locals];
        const s = &vm.scratch;
        var pc: u32 = 0;
        var sp: u32 = 0;
        var used: u64 = 0;
        var n_eff: u32 = 0;
        const status: Status = run: while (true) {
            // The loop ends by fuel at the latest: `used` grows by one per iteration.
            assert(used <= fuel);
            if (used == fuel) break :run .fuel_exhausted;
            used += 1;
            assert(pc < code.len);
            const opcode = code[pc];
            const info = isa.table[opcode];
            // The verifier proved these; a failure here is a VM bug, not bad input.
            assert(info.valid and s.boundary[pc]);
            assert(s.depth[pc] == sp);
            const next = pc + 1 + info.operand.size();
            switch (@as(Op, @enumFromInt(opcode))) {
                .nop => {},
                .halt => break :run .ok,
                .push => {
                    stack[sp] = std.mem.readInt(i64, code[pc + 1 ..][0..8], .little);
                    sp += 1;
                },
                .pop => sp -= 1,
                .dup => {
                    stack[sp] = stack[sp - 1];
                    sp += 1;
                },
                .swap => std.mem.swap(i64, &stack[sp - 1], &stack[sp - 2]),
                .over => {
                    stack[sp] = stack[sp - 2];
                    sp += 1;
                },
                .add, .sub, .mul => {
                    const a = stack[sp - 2];
                    const b = stack[sp - 1];
                    const r = switch (@as(Op, @enumFromInt(opcode))) {
                        .add => @addWithOverflow(a, b),
                        .sub => @subWithOverflow(a, b),
                        .mul => @mulWithOverflow(a, b),
                        else => unreachable,
                    };
                    if (r[1] != 0) break :run .overflow;
                    stack[sp - 2] = r[0];
                    sp -= 1;
                },
                .div => {
                    const a = stack[sp - 2];
                    const b = stack[sp - 1];
                    if (b == 0) break :run .div_by_zero;
                    if (a == std.math.minInt(i64) and b == -1) break :run .overflow;
                    stack[sp - 2] = @divTrunc(a, b);
                    sp -= 1;
                },
                .mod => {
                    const a = stack[sp - 2];
                    const b = stack[sp - 1];
                    if (b == 0) break :run .div_by_zero;
                    // x rem -1 is 0 for every x; special-cased because minInt rem -1 traps in hardware.
                    stack[sp - 2] = if (b == -1) 0 else @rem(a, b);
                    sp -= 1;
                },
                .neg => {
                    if (stack[sp - 1] == std.math.minInt(i64)) break :run .overflow;
                    stack[sp - 1] = -stack[sp - 1];
                },
                .band => {
                    stack[sp - 2] &= stack[sp - 1];
                    sp -= 1;
                },
                .bor => {
                    stack[sp - 2] |= stack[sp - 1];
                    sp -= 1;
                },
                .bxor => {
                    stack[sp - 2] ^= stack[sp - 1];
                    sp -= 1;
                },
                .eq, .ne, .lt, .le, .gt, .ge => {
                    const a = stack[sp - 2];
                    const b = stack[sp - 1];
                    const truth = switch (@as(Op, @enumFromInt(opcode))) {
                        .eq => a == b,
                        .ne => a != b,
                        .lt => a < b,
                        .le => a <= b,
                        .gt => a > b,
                        .ge => a >= b,
                        else => unreachable,
                    };
                    stack[sp - 2] = @intFromBool(truth);
                    sp -= 1;
                },
                .not_ => stack[sp - 1] = @intFromBool(stack[sp - 1] == 0),
                .jmp => {
                    pc = std.mem.readInt(u16, code[pc + 1 ..][0..2], .little);
                    continue :run;
                },
                .jz, .jnz => {
                    sp -= 1;
                    const zero = stack[sp] == 0;
                    const jump_if_zero = opcode == @intFromEnum(Op.jz);
                    if (zero == jump_if_zero) {
                        pc = std.mem.readInt(u16, code[pc + 1 ..][0..2], .little);
                        continue :run;
                    }
                },
                .load => {
                    stack[sp] = locals[code[pc + 1]];
                    sp += 1;
                },
                .store => {
                    sp -= 1;
                    locals[code[pc + 1]] = stack[sp];
                },
                .ldt => {
                    stack[sp] = switch (@as(isa.Field, @enumFromInt(code[pc + 1]))) {
                        .symbol => trigger.symbol,
                        .rotation => trigger.rotation,
                        .state => trigger.symbol * isa.rotations_count + trigger.rotation,
                        .actor => trigger.actor,
                        .node => trigger.node,
                        .arg => trigger.arg,
                    };
                    sp += 1;
                },
                // Effects: argument checks first, then capacity, then the state change, so a
                // failing effect leaves the stack exactly as it was before the instruction.
                .emit => {
                    if (n_eff == vm.effects.len) break :run .effects_full;
                    vm.effects[n_eff] = text_effect(.emit, pc, stack[sp - 1], s, code[pc + 1], null);
                    n_eff += 1;
                    sp -= 1;
                },
                .emits => {
                    if (n_eff == vm.effects.len) break :run .effects_full;
                    vm.effects[n_eff] = text_effect(.emits, pc, 0, s, code[pc + 1], code[pc + 2]);
                    n_eff += 1;
                },
                .mint => {
                    const actor = stack[sp - 2];
                    const amount = stack[sp - 1];
                    if (actor < 0) break :run .bad_actor;
                    if (amount <= 0) break :run .bad_amount;
                    if (n_eff == vm.effects.len) break :run .effects_full;
                    vm.effects[n_eff] = effect(.mint, pc, actor, amount, 0);
                    n_eff += 1;
                    sp -= 2;
                },
                .gift => {
                    const from = stack[sp - 3];
                    const to = stack[sp - 2];
                    const amount = stack[sp - 1];
                    if (from < 0 or to < 0) break :run .bad_actor;
                    if (amount <= 0) break :run .bad_amount;
                    if (n_eff == vm.effects.len) break :run .effects_full;
                    vm.effects[n_eff] = effect(.gift, pc, from, to, amount);
                    n_eff += 1;
                    sp -= 3;
                },
                .ask => {
                    const persona = stack[sp - 1];
                    if (persona < 0 or persona >= isa.symbols_count) break :run .bad_persona;
                    if (n_eff == vm.effects.len) break :run .effects_full;
                    vm.effects[n_eff] = text_effect(.ask, pc, persona, s, code[pc + 1], null);
                    n_eff += 1;
                    sp -= 1;
                },
                .propose => {
                    if (n_eff == vm.effects.len) break :run .effects_full;
                    vm.effects[n_eff] = text_effect(.propose, pc, 0, s, code[pc + 1], null);
                    n_eff += 1;
                },
            }
            assert(sp <= prog.max_stack);
            pc = next;
        };
        assert(n_eff <= vm.effects.len);
        return vm.result(status, pc, 0, used, sp, n_eff, prog.n_locals);
    }
};

fn effect(kind: isa.EffectKind, pc: u32, a: i64, b: i64, c: i64) Effect {
    return .{
        .kind = @intFromEnum(kind),
        .pc = pc,
        .a = a,
        .b = b,
        .c = c,
        .s1_off = 0,
        .s1_len = 0,
        .s2_off = 0,
        .s2_len = 0,
    };
}

/// An effect that carries one or two of the program's string constants (`k1`, `k2`), as their
/// offset and length in the program bytes.
fn text_effect(kind: isa.EffectKind, pc: u32, a: i64, s: *const verifier.Scratch, k1: u8, k2: ?u8) Effect {
    var e = effect(kind, pc, a, 0, 0);
    e.s1_off = s.const_off[k1];
    e.s1_len = s.const_len[k1];
    if (k2) |k| {
        e.s2_off = s.const_off[k];
        e.s2_len = s.const_len[k];
    }
    return e;
}

// ------------------------------------------------------------------------------------------------
// C ABI. Every entry point tolerates null pointers and returns `invalid_argument` rather than
// crashing the host.

export fn gibsey_vm_abi_version() u32 {
    return abi_version;
}

/// Sizes of the extern structs, so the binding can refuse a library whose layout it does not know.
/// 0: Config, 1: Trigger, 2: Effect, 3: RunResult.
export fn gibsey_vm_sizeof(which: u32) u32 {
    return switch (which) {
        0 => @sizeOf(Config),
        1 => @sizeOf(Trigger),
        2 => @sizeOf(Effect),
        3 => @sizeOf(RunResult),
        else => 0,
    };
}

/// Packs valid | operand << 8 | pops << 16 | pushes << 24 for one opcode byte, so the Python
/// assembler can prove its copy of the table matches this one.
export fn gibsey_vm_opcode_info(opcode: u8) u32 {
    const info = isa.table[opcode];
    return @as(u32, @intFromBool(info.valid)) | @as(u32, @intFromEnum(info.operand)) << 8 |
        @as(u32, info.pops) << 16 | @as(u32, info.pushes) << 24;
}

/// Returns null on an out-of-range config or out of memory.
export fn gibsey_vm_create(config: ?*const Config) ?*Vm {
    const cfg = (config orelse return null).*;
    const allocator = std.heap.page_allocator;
    const vm = allocator.create(Vm) catch return null;
    vm.* = Vm.init(allocator, cfg) catch {
        allocator.destroy(vm);
        return null;
    };
    return vm;
}

export fn gibsey_vm_destroy(vm: ?*Vm) void {
    const v = vm orelse return;
    const allocator = std.heap.page_allocator;
    v.deinit(allocator);
    allocator.destroy(v);
}

export fn gibsey_vm_verify(vm: ?*Vm, code: ?[*]const u8, len: usize, err_offset: ?*u32) i32 {
    const v = vm orelse return @intFromEnum(Status.invalid_argument);
    const bytes: []const u8 = if (code) |p| p[0..len] else if (len == 0) &.{} else {
        return @intFromEnum(Status.invalid_argument);
    };
    const r = v.verify(bytes);
    if (err_offset) |p| p.* = r.offset;
    return @intFromEnum(r.status);
}

/// Verifies and runs `code` against `trigger` with at most `fuel` instructions. The result's
/// effects/stack/locals point into the VM and stay valid until the next call on this VM.
export fn gibsey_vm_run(vm: ?*Vm, code: ?[*]const u8, len: usize, trigger: ?*const Trigger, fuel: u64, out: ?*RunResult) i32 {
    const v = vm orelse return @intFromEnum(Status.invalid_argument);
    const t = trigger orelse return @intFromEnum(Status.invalid_argument);
    const o = out orelse return @intFromEnum(Status.invalid_argument);
    const bytes: []const u8 = if (code) |p| p[0..len] else if (len == 0) &.{} else {
        return @intFromEnum(Status.invalid_argument);
    };
    o.* = v.run(bytes, t.*, fuel);
    return o.status;
}

// ------------------------------------------------------------------------------------------------
// Tests.

test {
    _ = isa;
    _ = verifier;
}

const testing = std.testing;

/// Builds a bytecode file in a fixed buffer, for tests.
const Builder = struct {
    buf: [1024]u8 = undefined,
    consts: [8][]const u8 = undefined,
    n_consts: u16 = 0,
    code: [512]u8 = undefined,
    code_len: u16 = 0,
    max_stack: u16 = 16,
    n_locals: u16 = 4,

    fn str(b: *Builder, s: []const u8) u8 {
        b.consts[b.n_consts] = s;
        b.n_consts += 1;
        return @intCast(b.n_consts - 1);
    }
    fn op(b: *Builder, o: Op) void {
        b.code[b.code_len] = @intFromEnum(o);
        b.code_len += 1;
    }
    fn op1(b: *Builder, o: Op, x: u8) void {
        b.op(o);
        b.code[b.code_len] = x;
        b.code_len += 1;
    }
    fn op2(b: *Builder, o: Op, x: u8, y: u8) void {
        b.op1(o, x);
        b.code[b.code_len] = y;
        b.code_len += 1;
    }
    fn push(b: *Builder, v: i64) void {
        b.op(.push);
        std.mem.writeInt(i64, b.code[b.code_len..][0..8], v, .little);
        b.code_len += 8;
    }
    fn jump(b: *Builder, o: Op, target: u16) void {
        b.op(o);
        std.mem.writeInt(u16, b.code[b.code_len..][0..2], target, .little);
        b.code_len += 2;
    }
    fn here(b: *const Builder) u16 {
        return b.code_len;
    }
    fn bytes(b: *Builder) []const u8 {
        @memcpy(b.buf[0..4], &isa.magic);
        b.buf[4] = isa.version;
        b.buf[5] = 0;
        std.mem.writeInt(u16, b.buf[6..8], b.max_stack, .little);
        std.mem.writeInt(u16, b.buf[8..10], b.n_locals, .little);
        std.mem.writeInt(u16, b.buf[10..12], b.n_consts, .little);
        std.mem.writeInt(u32, b.buf[12..16], b.code_len, .little);
        var off: usize = isa.header_size;
        for (b.consts[0..b.n_consts]) |s| {
            std.mem.writeInt(u16, b.buf[off..][0..2], @intCast(s.len), .little);
            @memcpy(b.buf[off + 2 ..][0..s.len], s);
            off += 2 + s.len;
        }
        @memcpy(b.buf[off..][0..b.code_len], b.code[0..b.code_len]);
        return b.buf[0 .. off + b.code_len];
    }
};

const trigger_default: Trigger = .{ .symbol = 5, .rotation = 3, .actor = 7, .node = 2, .arg = -1 };

fn test_vm() !Vm {
    return Vm.init(testing.allocator, config_default);
}

fn expect_run(vm: *Vm, bytes: []const u8, status: Status, stack_top: ?i64) !RunResult {
    const r = vm.run(bytes, trigger_default, 10_000);
    try testing.expectEqual(@intFromEnum(status), r.status);
    if (stack_top) |top| {
        try testing.expect(r.stack_depth >= 1);
        try testing.expectEqual(top, r.stack[r.stack_depth - 1]);
    }
    return r;
}

test "arithmetic, comparison and stack shuffles" {
    var vm = try test_vm();
    defer vm.deinit(testing.allocator);
    const Case = struct { a: i64, b: i64, op: Op, want: i64 };
    const cases = [_]Case{
        .{ .a = 7, .b = 5, .op = .add, .want = 12 },
        .{ .a = 7, .b = 5, .op = .sub, .want = 2 },
        .{ .a = -7, .b = 5, .op = .mul, .want = -35 },
        .{ .a = -7, .b = 2, .op = .div, .want = -3 }, // truncates toward zero
        .{ .a = -7, .b = 2, .op = .mod, .want = -1 }, // sign of the dividend
        .{ .a = 12, .b = 10, .op = .band, .want = 8 },
        .{ .a = 12, .b = 10, .op = .bor, .want = 14 },
        .{ .a = 12, .b = 10, .op = .bxor, .want = 6 },
        .{ .a = 3, .b = 3, .op = .eq, .want = 1 },
        .{ .a = 3, .b = 3, .op = .ne, .want = 0 },
        .{ .a = 2, .b = 3, .op = .lt, .want = 1 },
        .{ .a = 3, .b = 3, .op = .le, .want = 1 },
        .{ .a = 2, .b = 3, .op = .gt, .want = 0 },
        .{ .a = 2, .b = 3, .op = .ge, .want = 0 },
        .{ .a = 1, .b = 2, .op = .swap, .want = 1 },
        .{ .a = 1, .b = 2, .op = .over, .want = 1 },
    };
    for (cases) |c| {
        var b: Builder = .{};
        b.push(c.a);
        b.push(c.b);
        b.op(c.op);
        b.op(.halt);
        _ = try expect_run(&vm, b.bytes(), .ok, c.want);
    }
}

test "overflow and division errors carry the pc" {
    var vm = try test_vm();
    defer vm.deinit(testing.allocator);
    const Case = struct { a: i64, b: i64, op: Op, status: Status };
    const min = std.math.minInt(i64);
    const max = std.math.maxInt(i64);
    const cases = [_]Case{
        .{ .a = max, .b = 1, .op = .add, .status = .overflow },
        .{ .a = min, .b = 1, .op = .sub, .status = .overflow },
        .{ .a = max, .b = 2, .op = .mul, .status = .overflow },
        .{ .a = min, .b = -1, .op = .div, .status = .overflow },
        .{ .a = 1, .b = 0, .op = .div, .status = .div_by_zero },
        .{ .a = 1, .b = 0, .op = .mod, .status = .div_by_zero },
        .{ .a = min, .b = -1, .op = .mod, .status = .ok },
    };
    for (cases) |c| {
        var b: Builder = .{};
        b.push(c.a);
        b.push(c.b);
        b.op(c.op);
        b.op(.halt);
        const r = try expect_run(&vm, b.bytes(), c.status, null);
        if (c.status != .ok) {
            try testing.expectEqual(@as(u32, 18), r.pc);
            // The failing instruction left the stack untouched.
            try testing.expectEqual(@as(u32, 2), r.stack_depth);
        }
    }
    var b: Builder = .{};
    b.push(min);
    b.op(.neg);
    b.op(.halt);
    _ = try expect_run(&vm, b.bytes(), .overflow, min);
}

test "a counting loop with locals and jumps" {
    var vm = try test_vm();
    defer vm.deinit(testing.allocator);
    // sum = 0; i = 100; loop: if i == 0 goto end; sum += i; i -= 1; goto loop; end: push sum
    var b: Builder = .{};
    b.push(100);
    b.op1(.store, 1);
    const loop = b.here();
    b.op1(.load, 1);
    const jz_at = b.here();
    b.jump(.jz, 0); // patched below
    b.op1(.load, 0);
    b.op1(.load, 1);
    b.op(.add);
    b.op1(.store, 0);
    b.op1(.load, 1);
    b.push(1);
    b.op(.sub);
    b.op1(.store, 1);
    b.jump(.jmp, loop);
    const end = b.here();
    b.op1(.load, 0);
    b.op(.halt);
    std.mem.writeInt(u16, b.code[jz_at + 1 ..][0..2], end, .little);
    const r = try expect_run(&vm, b.bytes(), .ok, 5050);
    try testing.expectEqual(@as(i64, 5050), r.locals[0]);
    try testing.expectEqual(@as(u64, 2 + 100 * 11 + 2 + 2), r.fuel_used);
}

test "fuel bounds an infinite loop" {
    var vm = try test_vm();
    defer vm.deinit(testing.allocator);
    var b: Builder = .{};
    b.op(.nop);
    b.jump(.jmp, 0);
    const r = vm.run(b.bytes(), trigger_default, 1001);
    try testing.expectEqual(@intFromEnum(Status.fuel_exhausted), r.status);
    try testing.expectEqual(@as(u64, 1001), r.fuel_used);
    try testing.expectEqual(@as(u32, 1), r.pc); // 1001 = 500 x (nop, jmp) + nop; next is the jmp
    const zero = vm.run(b.bytes(), trigger_default, 0);
    try testing.expectEqual(@intFromEnum(Status.fuel_exhausted), zero.status);
    try testing.expectEqual(@as(u64, 0), zero.fuel_used);
}

test "trigger fields" {
    var vm = try test_vm();
    defer vm.deinit(testing.allocator);
    const want = [_]i64{ 5, 3, 23, 7, 2, -1 };
    for (want, 0..) |w, field| {
        var b: Builder = .{};
        b.op1(.ldt, @intCast(field));
        b.op(.halt);
        _ = try expect_run(&vm, b.bytes(), .ok, w);
    }
    var b: Builder = .{};
    b.op(.halt);
    var bad = trigger_default;
    bad.symbol = 64;
    try testing.expectEqual(@intFromEnum(Status.bad_trigger), vm.run(b.bytes(), bad, 10).status);
    bad = trigger_default;
    bad.rotation = 4;
    try testing.expectEqual(@intFromEnum(Status.bad_trigger), vm.run(b.bytes(), bad, 10).status);
}

test "effects are returned in order with string references into the bytecode" {
    var vm = try test_vm();
    defer vm.deinit(testing.allocator);
    var b: Builder = .{};
    const topic = b.str("glyph/chime");
    const prompt = b.str("dream of the fox");
    const branch = b.str("fox-dream");
    b.push(42);
    b.op1(.emit, topic);
    b.op2(.emits, topic, prompt);
    b.op1(.ldt, @intFromEnum(isa.Field.actor));
    b.push(10);
    b.op(.mint);
    b.push(1);
    b.push(2);
    b.push(3);
    b.op(.gift);
    b.op1(.ldt, @intFromEnum(isa.Field.symbol));
    b.op1(.ask, prompt);
    b.op1(.propose, branch);
    b.op(.halt);
    const bytes = b.bytes();
    const r = try expect_run(&vm, bytes, .ok, null);
    try testing.expectEqual(@as(u32, 6), r.effect_count);
    const e = r.effects[0..r.effect_count];
    try testing.expectEqual(@intFromEnum(isa.EffectKind.emit), e[0].kind);
    try testing.expectEqual(@as(i64, 42), e[0].a);
    try testing.expectEqualStrings("glyph/chime", bytes[e[0].s1_off..][0..e[0].s1_len]);
    try testing.expectEqualStrings("dream of the fox", bytes[e[1].s2_off..][0..e[1].s2_len]);
    try testing.expectEqual(@as(i64, 7), e[2].a);
    try testing.expectEqual(@as(i64, 10), e[2].b);
    try testing.expectEqual(@as(i64, 3), e[3].c);
    try testing.expectEqual(@as(i64, 5), e[4].a);
    try testing.expectEqualStrings("fox-dream", bytes[e[5].s1_off..][0..e[5].s1_len]);
    try testing.expectEqual(@as(u32, 0), r.stack_depth);
}

test "effect argument errors and a full effect buffer" {
    var vm = try Vm.init(testing.allocator, .{ .stack_cap = 16, .locals_cap = 4, .effects_cap = 2, .code_cap = 256 });
    defer vm.deinit(testing.allocator);
    {
        var b: Builder = .{};
        const k = b.str("x");
        b.op1(.propose, k);
        b.op1(.propose, k);
        b.op1(.propose, k);
        b.op(.halt);
        const r = try expect_run(&vm, b.bytes(), .effects_full, null);
        try testing.expectEqual(@as(u32, 4), r.pc);
        try testing.expectEqual(@as(u32, 2), r.effect_count);
    }
    const Case = struct { x: i64, y: i64, op: Op, status: Status };
    const cases = [_]Case{
        .{ .x = -1, .y = 5, .op = .mint, .status = .bad_actor },
        .{ .x = 1, .y = 0, .op = .mint, .status = .bad_amount },
        .{ .x = 1, .y = -5, .op = .gift, .status = .bad_amount },
        .{ .x = -1, .y = 5, .op = .gift, .status = .bad_actor },
    };
    for (cases) |c| {
        var b: Builder = .{};
        if (c.op == .gift) b.push(0);
        b.push(c.x);
        b.push(c.y);
        b.op(c.op);
        b.op(.halt);
        _ = try expect_run(&vm, b.bytes(), c.status, c.y);
    }
    var b: Builder = .{};
    const k = b.str("p");
    b.push(64);
    b.op1(.ask, k);
    b.op(.halt);
    _ = try expect_run(&vm, b.bytes(), .bad_persona, 64);
}

fn expect_verify(vm: *Vm, bytes: []const u8, status: Status, offset: u32) !void {
    const r = vm.verify(bytes);
    try testing.expectEqual(status, r.status);
    try testing.expectEqual(offset, r.offset);
    // run must refuse the same way.
    const rr = vm.run(bytes, trigger_default, 100);
    try testing.expectEqual(@intFromEnum(status), rr.status);
    try testing.expectEqual(@as(u64, 0), rr.fuel_used);
}

test "verifier rejects each kind of malformed bytecode at the right offset" {
    var vm = try test_vm();
    defer vm.deinit(testing.allocator);
    const cs = isa.header_size; // code start when there are no constants
    {
        var b: Builder = .{};
        b.op(.halt);
        const good = b.bytes();
        try expect_verify(&vm, good[0..10], .truncated, 0);
        var copy: [64]u8 = undefined;
        @memcpy(copy[0..good.len], good);
        copy[0] = 'X';
        try expect_verify(&vm, copy[0..good.len], .bad_magic, 0);
        copy[0] = 'G';
        copy[4] = 2;
        try expect_verify(&vm, copy[0..good.len], .bad_version, 4);
        copy[4] = 1;
        copy[5] = 1;
        try expect_verify(&vm, copy[0..good.len], .bad_header, 5);
        copy[5] = 0;
        copy[good.len] = 0;
        try expect_verify(&vm, copy[0 .. good.len + 1], .trailing_bytes, cs + 1);
        try expect_verify(&vm, copy[0 .. good.len - 1], .truncated, cs);
    }
    {
        var b: Builder = .{};
        b.max_stack = 300;
        b.op(.halt);
        try expect_verify(&vm, b.bytes(), .exceeds_limits, 6);
    }
    {
        var b: Builder = .{};
        _ = b.str("\xff\xfe");
        b.op(.halt);
        try expect_verify(&vm, b.bytes(), .bad_string, cs);
    }
    {
        var b: Builder = .{};
        b.op(.nop);
        b.code[b.code_len] = 0xEE;
        b.code_len += 1;
        try expect_verify(&vm, b.bytes(), .bad_opcode, cs + 1);
    }
    {
        var b: Builder = .{};
        b.op(.nop);
        b.op(.push);
        b.code_len += 3; // 3 of 8 immediate bytes
        try expect_verify(&vm, b.bytes(), .truncated_operand, cs + 1);
    }
    {
        var b: Builder = .{};
        b.op1(.propose, 0); // no constants
        b.op(.halt);
        try expect_verify(&vm, b.bytes(), .bad_const, cs);
    }
    {
        var b: Builder = .{};
        b.op1(.load, 4); // n_locals = 4
        b.op(.halt);
        try expect_verify(&vm, b.bytes(), .bad_local, cs);
    }
    {
        var b: Builder = .{};
        b.op1(.ldt, 6);
        b.op(.halt);
        try expect_verify(&vm, b.bytes(), .bad_field, cs);
    }
    {
        var b: Builder = .{};
        b.push(1);
        b.jump(.jz, 1); // inside the PUSH immediate
        b.op(.halt);
        try expect_verify(&vm, b.bytes(), .bad_jump, cs + 9);
        var c: Builder = .{};
        c.jump(.jmp, 3); // == code_len
        try expect_verify(&vm, c.bytes(), .bad_jump, cs);
    }
    {
        var b: Builder = .{};
        b.op(.nop);
        b.op(.add);
        b.op(.halt);
        try expect_verify(&vm, b.bytes(), .stack_underflow, cs + 1);
    }
    {
        var b: Builder = .{};
        b.max_stack = 1;
        b.push(1);
        b.push(2);
        b.op(.halt);
        try expect_verify(&vm, b.bytes(), .stack_overflow, cs + 9);
    }
    {
        // A loop that pushes one value per iteration: depth at the loop head disagrees.
        var b: Builder = .{};
        b.push(1);
        b.jump(.jmp, 0);
        try expect_verify(&vm, b.bytes(), .depth_mismatch, cs);
    }
    {
        var b: Builder = .{};
        b.op(.nop);
        try expect_verify(&vm, b.bytes(), .falls_off_end, cs);
        var c: Builder = .{};
        try expect_verify(&vm, c.bytes(), .falls_off_end, cs);
    }
    {
        // Unreachable code is decoded but its depth is not checked.
        var b: Builder = .{};
        b.op(.halt);
        b.op(.add);
        b.op(.halt);
        try testing.expectEqual(Status.ok, vm.verify(b.bytes()).status);
    }
}

test "random and mutated bytecode never crashes the verifier or the interpreter" {
    var vm = try test_vm();
    defer vm.deinit(testing.allocator);
    var prng = std.Random.DefaultPrng.init(0x61b5e7);
    const random = prng.random();
    var b: Builder = .{};
    const k = b.str("t");
    b.push(3);
    b.op1(.store, 0);
    b.op1(.load, 0);
    b.op1(.emit, k);
    b.op1(.load, 0);
    b.push(1);
    b.op(.sub);
    b.op(.dup);
    b.op1(.store, 0);
    b.jump(.jnz, 11);
    b.op(.halt);
    const seed = b.bytes();
    try testing.expectEqual(@intFromEnum(Status.ok), vm.run(seed, trigger_default, 1000).status);
    var buf: [256]u8 = undefined;
    var ok_count: u32 = 0;
    for (0..20_000) |i| {
        var len: usize = seed.len;
        @memcpy(buf[0..len], seed);
        if (i % 4 == 0) {
            len = random.uintLessThan(usize, buf.len);
            random.bytes(buf[0..len]);
            if (len >= 4) @memcpy(buf[0..4], &isa.magic);
        } else {
            for (0..random.uintLessThan(u32, 4) + 1) |_| {
                buf[random.uintLessThan(usize, len)] = random.int(u8);
            }
        }
        const fuel = random.uintLessThan(u64, 500);
        const r = vm.run(buf[0..len], trigger_default, fuel);
        try testing.expect(r.fuel_used <= fuel);
        if (r.status == 0) ok_count += 1;
    }
    try testing.expect(ok_count > 0);
}
