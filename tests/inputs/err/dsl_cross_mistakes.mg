model m {
  feature a: categorical(hash = 100) embed 8
  layer mmoe { experts 4 x [8] cross 2 cross 3 }
  layer mmoe { experts 2 x [4] cross 0 }
  task ctr: binary(label = click) tower [4]
}
