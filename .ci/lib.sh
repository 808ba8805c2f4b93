# Shared helpers for .ci/stages/*.sh (sourced, not run).

# export_tree <dest>: copy the source tree to <dest> the way a fresh clone
# would have it: tracked files plus new, not-ignored ones; never build/,
# *.egg-info, in-place *.so or venvs (.gitignore). Without git (an unpacked
# sdist, say) it falls back to tar with the same exclusions.
export_tree() {
    local root dest=$1
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    mkdir -p "$dest"
    if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # shellcheck disable=SC2016  # $f is expanded by the inner sh
        git -C "$root" ls-files -z --cached --others --exclude-standard \
            | (cd "$root" && xargs -0 -r sh -c 'for f; do if [ -e "$f" ]; then printf "%s\0" "$f"; fi; done' _) \
            | tar -C "$root" --null -T - -cf - | tar -C "$dest" -xf -
    else
        tar -C "$root" --exclude=./build --exclude='*.egg-info' --exclude='*.so' \
            --exclude=./.ci-venv --exclude=./.venv --exclude=./.git -cf - . | tar -C "$dest" -xf -
    fi
}
