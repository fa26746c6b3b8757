"""`python -m facecast.avatars sheet OUT.png` writes a contact sheet of the built-in characters;
`python -m facecast.avatars bench [--avatar REF ...]` prints render ms/frame on one core."""

from facecast.cli.avatar_devtools import main

main()
