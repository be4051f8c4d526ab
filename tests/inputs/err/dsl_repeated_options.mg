model m {
  feature a: categorical(hash = 100) embed 8 embed 4
  layer mmoe { experts 4 x [8] units [4] }
  task ctr: binary(label = click) tower [4] tower [2]
  train { batch 64 batch 32 }
}
