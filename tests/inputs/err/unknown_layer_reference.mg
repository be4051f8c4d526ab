model m {
  feature a: categorical(hash = 100)
  layer bottom: shared_bottom { units [16] }
  layer mix: mmoe { experts 4 x [8] }
  task ctr: binary(label = click) input botom tower [4]
  task cvr: binary(label = buy) input mixx
}
