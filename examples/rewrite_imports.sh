#!/usr/bin/env bash
# Rewrite a Nameko code base's imports to threadko, in place, from the
# directory it is run in (GNU sed). Only `import`/`from` lines change:
# "nameko-rpc" and the "nameko.*" headers are wire names threadko keeps.
grep -rlE --include='*.py' '^\s*(from|import) (nameko|kombu)\b' . \
  | xargs -r sed -i -E \
      -e 's/^(\s*)(from|import) nameko(\.|\s|$)/\1\2 threadko\3/' \
      -e 's/^(\s*)from kombu import /\1from threadko.messaging import /'
