// Multi-valued features on the categorical generator: a user's recently clicked items
// (`history`, up to 20 per row, read through the candidate item's table and mean-pooled),
// weighted interest tags (sum pooling, one weight per tag in `tag_weights`) and the
// ad's keywords (max pooling). A cell holds its values separated by `|`; a Parquet list
// column works too. The generator's labels follow the pooled values, so the bags carry
// signal: compare against a copy without them.

model synthetic_history {
  data synthetic
  synthetic categorical(rows = 100000, seed = 1, cardinality = 1000)

  feature user: categorical(hash = 2000) embed 8
  feature item: categorical(hash = 4000) embed 8
  feature history: categorical(table = item, max_len = 20)
  feature tags: categorical(hash = 500, max_len = 8, pooling = sum, weights = tag_weights) embed 8
  feature keywords: categorical(hash = 1000, max_len = 5, pooling = max) embed 8

  layer mmoe { experts 4 x [32] }

  task ctr: binary(label = "click") tower [16]
  task like: binary(label = "like") tower [16]

  train { adam(lr = 0.002) batch 512 epochs 3 seed 42 }
}
