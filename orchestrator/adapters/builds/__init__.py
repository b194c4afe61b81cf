"""Whole-kernel builds: source trees (a directory, a git revision, Debian's linux-source), the
kbuild runs (config, bzImage and modules out of tree, ccache), and the installed tree that the
`local:` source then serves like any other kernel. The use case is app/build.py."""
