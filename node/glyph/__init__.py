"""The glyph runtime: a rotation -> the opcode table -> the Zig VM -> effects, and the ritual that
records it."""
