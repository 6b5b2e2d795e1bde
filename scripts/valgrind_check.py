"""Count valgrind memcheck error blocks and those whose stack names dogpile's extension."""
import re
import sys

text = open(sys.argv[1]).read()
blocks = re.split(r"^==\d+== \n", text, flags=re.M)
KINDS = r"Invalid|Conditional|Use of uninit|Mismatched|Syscall param|Source and dest"
errs = [b for b in blocks if re.search(rf"^==\d+== ({KINDS})", b, re.M)]
ours = [b for b in errs if re.search(r"_core\.c|_native_lock\.h|dogpile/_core", b)]
print(f"{len(errs)} error blocks, {len(ours)} attributed to dogpile's extension")
for b in ours[:3]:
    print(b)
sys.exit(1 if ours else 0)
