// Parses fine; lowering finds every mistake, as for TOML.
model m {
  feature a: categorical(hash = 100) embed 8
  feature b: categorical(hash = 100) embed 4
  feature a: dense
  cross ab = product(a, bb)
  cross ab2 = product(a, b)
  layer bottom: shared_bottom { experts 4 x [8] }
  layer mmeo { experts 0 x [8] }
  task ctr: binary(label = click) tower [4]
  task cvr: binary()
  train { adam(lr = 0) batch 0 }
}
