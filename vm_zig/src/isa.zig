//! The instruction set of the Gibsey glyph VM: opcodes, operand shapes, stack effects, the
//! bytecode header layout and every status code. Single source of truth for the verifier and the
//! interpreter; `ISA.md` documents the same table for people, and `node/glyph/vm/asm.py` mirrors it for
//! the assembler (a test checks the two agree through the shared library's table export).

const std = @import("std");
const assert = std.debug.assert;

/// "GZVM" followed by a version byte. Bumping the version is the only way to change encodings.
pub const magic = [4]u8{ 'G', 'Z', 'V', 'M' };
pub const version: u8 = 1;

/// Header: magic(4) version(1) flags(1) max_stack(u16) n_locals(u16) n_consts(u16) code_len(u32),
/// all little-endian, then the constant pool, then the code. The file is exactly that long.
pub const header_size: u32 = 16;
pub const off_version: u32 = 4;
pub const off_flags: u32 = 5;
pub const off_max_stack: u32 = 6;
pub const off_n_locals: u32 = 8;
pub const off_n_consts: u32 = 10;
pub const off_code_len: u32 = 12;

/// Operands that name a constant or a local are one byte, so a program can name at most 256 of each.
pub const consts_max: u32 = 256;
pub const locals_max: u32 = 256;
/// Jump targets are u16 code offsets, so the code section is at most 65535 bytes.
pub const code_len_max: u32 = 65535;
/// Trigger fields readable by LDT (see `Field`).
pub const fields_count: u8 = 6;
/// Symbols and personas are the 64 base symbols of QDPI-256; rotations are 0..3.
pub const symbols_count: u32 = 64;
pub const rotations_count: u32 = 4;

/// Status codes returned across the C ABI. 0 is success; 1..31 are verifier errors (the offset is a
/// byte offset in the bytecode file); 32..63 are run-time errors (the pc is a code offset);
/// 64.. are host misuse. The numbers are ABI: never renumber, only append.
pub const Status = enum(i32) {
    ok = 0,
    // Verifier.
    truncated = 1,
    bad_magic = 2,
    bad_version = 3,
    bad_header = 4,
    exceeds_limits = 5,
    bad_string = 6,
    trailing_bytes = 7,
    bad_opcode = 8,
    truncated_operand = 9,
    bad_const = 10,
    bad_local = 11,
    bad_field = 12,
    bad_jump = 13,
    stack_underflow = 14,
    stack_overflow = 15,
    depth_mismatch = 16,
    falls_off_end = 17,
    // Run time.
    fuel_exhausted = 32,
    div_by_zero = 33,
    overflow = 34,
    effects_full = 35,
    bad_amount = 36,
    bad_actor = 37,
    bad_persona = 38,
    bad_trigger = 39,
    // Host misuse.
    invalid_argument = 64,
};

/// How the bytes after an opcode are read.
pub const Operand = enum(u8) {
    none = 0,
    imm64 = 1, // i64, little-endian
    constant = 2, // u8 index into the constant pool
    local = 3, // u8 index into the locals
    field = 4, // u8 trigger field number
    target = 5, // u16 absolute code offset, little-endian
    constant2 = 6, // two u8 constant indexes

    pub fn size(operand: Operand) u8 {
        return switch (operand) {
            .none => 0,
            .imm64 => 8,
            .constant, .local, .field => 1,
            .target, .constant2 => 2,
        };
    }
};

pub const Op = enum(u8) {
    nop = 0x00,
    halt = 0x01,
    push = 0x02,
    pop = 0x03,
    dup = 0x04,
    swap = 0x05,
    over = 0x06,
    add = 0x10,
    sub = 0x11,
    mul = 0x12,
    div = 0x13,
    mod = 0x14,
    neg = 0x15,
    band = 0x16,
    bor = 0x17,
    bxor = 0x18,
    eq = 0x20,
    ne = 0x21,
    lt = 0x22,
    le = 0x23,
    gt = 0x24,
    ge = 0x25,
    not_ = 0x26,
    jmp = 0x30,
    jz = 0x31,
    jnz = 0x32,
    load = 0x40,
    store = 0x41,
    ldt = 0x42,
    emit = 0x50,
    emits = 0x51,
    mint = 0x52,
    gift = 0x53,
    ask = 0x54,
    propose = 0x55,
};

pub const Info = struct {
    valid: bool = false,
    operand: Operand = .none,
    pops: u8 = 0,
    pushes: u8 = 0,
};

fn info_of(op: Op) Info {
    return switch (op) {
        .nop, .halt => .{ .valid = true },
        .push => .{ .valid = true, .operand = .imm64, .pushes = 1 },
        .pop => .{ .valid = true, .pops = 1 },
        .dup => .{ .valid = true, .pops = 1, .pushes = 2 },
        .swap => .{ .valid = true, .pops = 2, .pushes = 2 },
        .over => .{ .valid = true, .pops = 2, .pushes = 3 },
        .add, .sub, .mul, .div, .mod, .band, .bor, .bxor => .{ .valid = true, .pops = 2, .pushes = 1 },
        .eq, .ne, .lt, .le, .gt, .ge => .{ .valid = true, .pops = 2, .pushes = 1 },
        .neg, .not_ => .{ .valid = true, .pops = 1, .pushes = 1 },
        .jmp => .{ .valid = true, .operand = .target },
        .jz, .jnz => .{ .valid = true, .operand = .target, .pops = 1 },
        .load => .{ .valid = true, .operand = .local, .pushes = 1 },
        .store => .{ .valid = true, .operand = .local, .pops = 1 },
        .ldt => .{ .valid = true, .operand = .field, .pushes = 1 },
        .emit => .{ .valid = true, .operand = .constant, .pops = 1 },
        .emits => .{ .valid = true, .operand = .constant2 },
        .mint => .{ .valid = true, .pops = 2 },
        .gift => .{ .valid = true, .pops = 3 },
        .ask => .{ .valid = true, .operand = .constant, .pops = 1 },
        .propose => .{ .valid = true, .operand = .constant },
    };
}

/// Indexed by opcode byte; built at compile time so decoding is one table load.
pub const table: [256]Info = blk: {
    var t: [256]Info = @splat(.{});
    for (std.enums.values(Op)) |op| {
        t[@intFromEnum(op)] = info_of(op);
    }
    break :blk t;
};

/// Trigger fields for LDT.
pub const Field = enum(u8) {
    symbol = 0,
    rotation = 1,
    state = 2, // symbol * 4 + rotation: the QDPI-256 byte
    actor = 3,
    node = 4,
    arg = 5,
};

pub const EffectKind = enum(u32) {
    emit = 1, // topic = s1, a = integer payload
    emits = 2, // topic = s1, s2 = string payload
    mint = 3, // a = actor, b = amount
    gift = 4, // a = from, b = to, c = amount
    ask = 5, // a = persona (base symbol 0..63), s1 = prompt
    propose = 6, // s1 = branch name
};

/// One effect, as the host reads it. Strings are (offset, length) into the bytecode the host
/// passed in, so no string is copied and the effect buffer stays fixed-size.
pub const Effect = extern struct {
    kind: u32,
    pc: u32,
    a: i64,
    b: i64,
    c: i64,
    s1_off: u32,
    s1_len: u32,
    s2_off: u32,
    s2_len: u32,
};

comptime {
    // The Python binding mirrors this layout; it checks sizeof at load time too.
    assert(@sizeOf(Effect) == 48);
    for (std.enums.values(Op)) |op| {
        const i = table[@intFromEnum(op)];
        assert(i.valid);
        assert(i.pops <= 3 and i.pushes <= 3);
    }
}

test "table: every listed opcode is valid, every other byte is not" {
    var valid_count: u32 = 0;
    for (table) |i| {
        if (i.valid) valid_count += 1;
    }
    try std.testing.expectEqual(@as(u32, std.enums.values(Op).len), valid_count);
    try std.testing.expect(!table[0xFF].valid);
    try std.testing.expect(!table[0x07].valid);
}
