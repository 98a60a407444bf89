"""The glyph VM as Python sees it: the ctypes binding of the Zig library (`binding`), the
instruction set (`isa`), the assembler (`asm`) and a pure-Python reference model (`reference`)."""
