"""The glyph dial: frames from the Pico (USB serial or MQTT) become glyph/rotated events; a
virtual dial in the terminal; flashing the firmware."""
