import hashlib, json, os, sys
root = sys.argv[1]
out = {}
for base, _dirs, files in os.walk(root):
    for name in files:
        path = os.path.join(base, name)
        if os.path.islink(path):
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        out[os.path.relpath(path, root)] = digest.hexdigest()
print(json.dumps(out))
