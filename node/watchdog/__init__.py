"""The phoenix watchdog: systemd notify, the run record that notices a death, rebirth rituals
and crash-loop hearings."""
