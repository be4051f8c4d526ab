# Sourced by the census scripts: writes a Census-Income spec for one task group and one
# layer stack, under the reference protocol (embeddings of 8, towers of 8,
# Adam 1e-3, early stopping on the paper's validation half).
#
#   census_spec GROUP MODEL SEED EPOCHS PATIENCE [LAYER_KEYS] [TRAIN_KEYS] > spec.toml
# MODEL: shared_bottom | omoe | mmoe | cgc | ple | ple3. LAYER_KEYS are TOML lines added
# to every gated layer (temperature = 0.5, dropout = 0.1, ...); TRAIN_KEYS to [train].

# The setup both census scripts share: skips (exit 0) without the data, builds the
# binary, and sets $bin, $tmp (removed on exit) and $runs (the per-run lines).
census_prepare() {
  local data=../shared/data/census-income-kdd
  [ -f "$data/census-income.data.gz" ] || { echo "SKIPPED: $data is absent" >&2; exit 0; }
  cargo build --release -q
  bin=${MULTIGATE_BIN:-target/release/multigate}
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  runs="$tmp/runs.txt"
}

# One run: trains the spec of NAME's MODEL at SEED and appends to $runs the line
# "NAME, seed, test income auc, test never_married auc, best epoch, seconds".
census_run() { # name model seed epochs patience [layer keys] [train keys]
  census_spec 1 "$2" "$3" "$4" "$5" "${6:-}" "${7:-}" > "$tmp/spec.toml"
  local t0 out aucs best
  t0=$(date +%s)
  out=$("$bin" compile-and-train "$tmp/spec.toml" --out "$tmp/bundle" --fresh --force --no-tensorboard)
  aucs=$(echo "$out" | awk '/^test [a-z_]+: auc/ {printf "%s\t", $4}')
  best=$(echo "$out" | awk '/^best epoch/ {print $3}')
  echo -e "$1\t$3\t$aucs$best\t$(( $(date +%s) - t0 ))s" | tee -a "$runs" >&2
}

census_layers() { # model, extra layer keys
  local one
  case $1 in
    shared_bottom) printf '[[layers]]\nkind = "shared_bottom"\nunits = [128]\n'; return ;;
    omoe) one='[[layers]]\nkind = "moe"\nexperts = 8\nunits = [16]\n' ;;
    mmoe) one='[[layers]]\nkind = "mmoe"\nexperts = 8\nunits = [16]\n' ;;
    cgc|ple|ple3) one='[[layers]]\nkind = "cgc"\nexperts = 4\ntask_experts = 2\nunits = [16]\n' ;;
  esac
  local levels=1
  [ "$1" = ple ] && levels=2
  [ "$1" = ple3 ] && levels=3
  for _ in $(seq 1 $levels); do
    printf "$one"
    [ -n "${2:-}" ] && printf '%b\n' "$2"
    printf '\n'
  done
}

census_tasks() { # group
  if [ "$1" = 1 ]; then
    printf '[[tasks]]\nname = "income"\nkind = "binary"\nlabel = "income_50k"\npositive = "50000+."\ntower = [8]\n\n'
  else
    # Group 2: "at least college" (the data README's inferred categories); income is an input.
    printf '[[features]]\nname = "income_50k"\ntype = "categorical"\nhash_buckets = 1000\nembedding_dim = 8\n\n'
    printf '[[tasks]]\nname = "college"\nkind = "binary"\nlabel = "education"\ntower = [8]\n'
    printf 'positive = ["Associates degree-occup /vocational", "Associates degree-academic program", "Bachelors degree(BA AB BS)", "Masters degree(MA MS MEng MEd MSW MBA)", "Prof school degree (MD DDS DVM LLB JD)", "Doctorate degree(PhD EdD)"]\n\n'
  fi
  printf '[[tasks]]\nname = "never_married"\nkind = "binary"\nlabel = "marital_stat"\npositive = "Never married"\ntower = [8]\n\n'
}

census_table() { # runs-file name...: a markdown row per name, test AUC mean ± sd of both tasks
  local runs=$1; shift
  for name in "$@"; do
    awk -F'\t' -v n="$name" '$1 == n { k++; a += $3; aa += $3 * $3; b += $4; bb += $4 * $4 }
      END { ma = a / k; mb = b / k; sa = (k > 1) ? sqrt((aa - k * ma * ma) / (k - 1)) : 0; sb = (k > 1) ? sqrt((bb - k * mb * mb) / (k - 1)) : 0
            printf "| %s | %.4f ± %.4f | %.4f ± %.4f |\n", n, ma, sa, mb, sb }' "$runs"
  done
}

census_spec() { # group model seed epochs patience [layer keys] [train keys]
  sed -e '/^\[\[layers\]\]/,$d' -e 's/^embedding_dim = 4$/embedding_dim = 8/' -e "s|\.\./\.\./shared|$PWD/../shared|" \
    models/census_income_mmoe.toml
  census_tasks "$1"
  census_layers "$2" "${6:-}"
  printf '[train]\nlr = 0.001\nbatch_size = 512\nepochs = %s\npatience = %s\nseed = %s\n' "$4" "$5" "$((41 + $3))"
  [ -n "${7:-}" ] && printf '%b\n' "$7"
  return 0
}
