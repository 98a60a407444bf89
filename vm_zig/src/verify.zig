//! The bytecode verifier. A program runs only after this has proved, without running it, that
//! every byte decodes, every operand names something that exists, every jump lands on an
//! instruction, execution can never fall off the end, and the operand stack depth at every
//! reachable instruction is one fixed number within [0, max_stack]. The interpreter then relies on
//! those facts (and asserts them) instead of re-checking them per instruction.
//!
//! The order of the checks is part of the contract: the first failure found is the one reported,
//! and `node/glyph/vm/reference.py` implements the same order so tests can compare the two byte for byte.
//! No recursion and no allocation: all scratch space is sized once, at VM creation.

const std = @import("std");
const isa = @import("isa.zig");
const assert = std.debug.assert;
const Status = isa.Status;

/// Whole-file bound: header + a full constant pool (256 strings of up to 65535 bytes) + code.
pub const file_len_max: u32 = isa.header_size + isa.consts_max * (2 + 65535) + isa.code_len_max;

pub const Limits = struct {
    stack_cap: u32,
    locals_cap: u32,
    code_cap: u32,
};

/// What the interpreter needs from the header once verification passed.
pub const Program = struct {
    max_stack: u32 = 0,
    n_locals: u32 = 0,
    n_consts: u32 = 0,
    code_start: u32 = 0,
    code_len: u32 = 0,
};

/// Scratch memory, one slot per code byte, owned by the VM and reused by every verification.
pub const Scratch = struct {
    /// Stack depth on entry to the instruction at this code offset; `depth_unseen` if unreached.
    depth: []u32,
    /// True where an instruction starts.
    boundary: []bool,
    /// Code offsets still to visit. Each offset is pushed at most once (when first reached),
    /// so code_cap entries always suffice.
    worklist: []u32,
    /// Constant pool: byte offset (in the file) and length of each string.
    const_off: [isa.consts_max]u32 = @splat(0),
    const_len: [isa.consts_max]u32 = @splat(0),
};

pub const depth_unseen: u32 = std.math.maxInt(u32);

pub const Result = struct {
    status: Status,
    /// Byte offset in the file of the offending byte, header field or instruction.
    offset: u32,
    program: Program,
};

fn fail(status: Status, offset: u32) Result {
    assert(status != .ok);
    return .{ .status = status, .offset = offset, .program = .{} };
}

fn read_u16(bytes: []const u8, offset: u32) u16 {
    return std.mem.readInt(u16, bytes[offset..][0..2], .little);
}

fn read_u32(bytes: []const u8, offset: u32) u32 {
    return std.mem.readInt(u32, bytes[offset..][0..4], .little);
}

pub fn verify(s: *Scratch, bytes: []const u8, limits: Limits) Result {
    assert(s.depth.len >= limits.code_cap);
    assert(s.boundary.len >= limits.code_cap);
    assert(s.worklist.len >= limits.code_cap);

    // --- Header ---------------------------------------------------------------------------
    if (bytes.len > file_len_max) return fail(.exceeds_limits, 0);
    const len: u32 = @intCast(bytes.len);
    if (len < isa.header_size) return fail(.truncated, 0);
    if (!std.mem.eql(u8, bytes[0..4], &isa.magic)) return fail(.bad_magic, 0);
    if (bytes[isa.off_version] != isa.version) return fail(.bad_version, isa.off_version);
    if (bytes[isa.off_flags] != 0) return fail(.bad_header, isa.off_flags);
    const max_stack: u32 = read_u16(bytes, isa.off_max_stack);
    const n_locals: u32 = read_u16(bytes, isa.off_n_locals);
    const n_consts: u32 = read_u16(bytes, isa.off_n_consts);
    const code_len: u32 = read_u32(bytes, isa.off_code_len);
    if (n_locals > isa.locals_max) return fail(.bad_header, isa.off_n_locals);
    if (n_consts > isa.consts_max) return fail(.bad_header, isa.off_n_consts);
    if (max_stack > limits.stack_cap) return fail(.exceeds_limits, isa.off_max_stack);
    if (n_locals > limits.locals_cap) return fail(.exceeds_limits, isa.off_n_locals);
    if (code_len > limits.code_cap or code_len > isa.code_len_max) {
        return fail(.exceeds_limits, isa.off_code_len);
    }

    // --- Constant pool: n_consts x (u16 length, UTF-8 bytes) --------------------------------
    var off: u32 = isa.header_size;
    for (0..n_consts) |i| {
        if (len - off < 2) return fail(.truncated, off);
        const str_len: u32 = read_u16(bytes, off);
        if (len - off - 2 < str_len) return fail(.truncated, off);
        if (!std.unicode.utf8ValidateSlice(bytes[off + 2 ..][0..str_len])) {
            return fail(.bad_string, off);
        }
        s.const_off[i] = off + 2;
        s.const_len[i] = str_len;
        off += 2 + str_len;
    }
    assert(off <= len);
    const code_start = off;
    if (len - code_start < code_len) return fail(.truncated, code_start);
    if (len - code_start > code_len) return fail(.trailing_bytes, code_start + code_len);
    if (code_len == 0) return fail(.falls_off_end, code_start);
    const code = bytes[code_start..][0..code_len];

    // --- Pass 1: decode linearly; opcodes, operand lengths, operand indexes ----------------
    @memset(s.boundary[0..code_len], false);
    var pc: u32 = 0;
    while (pc < code_len) {
        const info = isa.table[code[pc]];
        if (!info.valid) return fail(.bad_opcode, code_start + pc);
        const size = info.operand.size();
        if (code_len - pc - 1 < size) return fail(.truncated_operand, code_start + pc);
        s.boundary[pc] = true;
        switch (info.operand) {
            .constant => if (code[pc + 1] >= n_consts) return fail(.bad_const, code_start + pc),
            .constant2 => {
                if (code[pc + 1] >= n_consts or code[pc + 2] >= n_consts) {
                    return fail(.bad_const, code_start + pc);
                }
            },
            .local => if (code[pc + 1] >= n_locals) return fail(.bad_local, code_start + pc),
            .field => if (code[pc + 1] >= isa.fields_count) return fail(.bad_field, code_start + pc),
            .none, .imm64, .target => {},
        }
        pc += 1 + size;
    }
    assert(pc == code_len);

    // --- Pass 2: every jump target is inside the code and on an instruction boundary -------
    pc = 0;
    while (pc < code_len) {
        const info = isa.table[code[pc]];
        assert(info.valid and s.boundary[pc]);
        if (info.operand == .target) {
            const target: u32 = read_u16(code, pc + 1);
            if (target >= code_len or !s.boundary[target]) return fail(.bad_jump, code_start + pc);
        }
        pc += 1 + info.operand.size();
    }

    // --- Pass 3: abstract interpretation of stack depth over the control-flow graph --------
    // Iterative LIFO worklist; a code offset is enqueued only when first reached, and every later
    // edge into it must agree on the depth, so the loop runs at most once per instruction.
    @memset(s.depth[0..code_len], depth_unseen);
    var work_len: u32 = 0;
    s.depth[0] = 0;
    s.worklist[work_len] = 0;
    work_len += 1;
    var visits: u32 = 0;
    while (work_len > 0) {
        visits += 1;
        assert(visits <= code_len);
        work_len -= 1;
        pc = s.worklist[work_len];
        assert(s.boundary[pc]);
        const depth_in = s.depth[pc];
        assert(depth_in <= max_stack);
        const op: isa.Op = @enumFromInt(code[pc]);
        const info = isa.table[code[pc]];
        if (depth_in < info.pops) return fail(.stack_underflow, code_start + pc);
        const depth_out = depth_in - info.pops + info.pushes;
        if (depth_out > max_stack) return fail(.stack_overflow, code_start + pc);
        const next = pc + 1 + info.operand.size();

        // Successors, in the order both implementations use: fallthrough, then jump target.
        var succ: [2]u32 = undefined;
        var succ_len: u32 = 0;
        switch (op) {
            .halt => {},
            .jmp => {
                succ[0] = read_u16(code, pc + 1);
                succ_len = 1;
            },
            .jz, .jnz => {
                succ[0] = next;
                succ[1] = read_u16(code, pc + 1);
                succ_len = 2;
            },
            else => {
                succ[0] = next;
                succ_len = 1;
            },
        }
        for (succ[0..succ_len]) |to| {
            if (to == code_len) return fail(.falls_off_end, code_start + pc);
            assert(to < code_len and s.boundary[to]);
            if (s.depth[to] == depth_unseen) {
                s.depth[to] = depth_out;
                assert(work_len < s.worklist.len);
                s.worklist[work_len] = to;
                work_len += 1;
            } else if (s.depth[to] != depth_out) {
                return fail(.depth_mismatch, code_start + to);
            }
        }
    }

    return .{ .status = .ok, .offset = 0, .program = .{
        .max_stack = max_stack,
        .n_locals = n_locals,
        .n_consts = n_consts,
        .code_start = code_start,
        .code_len = code_len,
    } };
}
