"""The guest runtime: root image, per-kernel boot files, accelerator detection, libvirt domains,
SSH, and one probe (boot, upload, run, collect, tear down)."""
