// A multiclass task beside a binary one, on the categorical generator: `category` is
// one of four classes (declared here; leave `classes` out to take them from the
// training labels). Softmax cross-entropy; accuracy, logloss and macro one-vs-rest AUC;
// `predict` writes one probability column per class (genre.drama, ...).

model synthetic_multiclass {
  data synthetic
  synthetic categorical

  feature user: categorical(hash = 2000) embed 8
  feature item: categorical(hash = 2000) embed 8
  feature hour: categorical(vocab = ["v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11"]) embed 4

  layer mmoe { experts 4 x [32] }

  task genre: multiclass(label = "category", classes = ["comedy", "drama", "news", "sport"]) tower [16]
  task ctr: binary(label = "click") tower [16]

  train { adam(lr = 0.002) batch 512 epochs 5 seed 42 select "genre.accuracy" }
}
