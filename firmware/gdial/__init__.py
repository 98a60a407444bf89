"""The glyph dial's pure logic, shared by the Pico firmware and the node.

Everything in this package runs unchanged under MicroPython (on the board, and under Node.js in
the tests) and under CPython (the node imports it as `gibsey.dialcore`): no `typing`, no
`__future__`, no allocation in the interrupt path, annotations only where both accept them.
"""

VERSION = "1.0.0"
