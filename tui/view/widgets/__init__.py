"""The widgets of the monitor's screens: each renders a part of one snapshot."""
