"""Helpers for tests/test_units.py and tests/test_provisioning.py (debootstrap roots, overlays,
chroot and nspawn targets, the offline bundle)."""
