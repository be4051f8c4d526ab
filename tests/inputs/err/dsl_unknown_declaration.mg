# A misspelt declaration keyword (issue 9, item 8): its own message and a suggestion.
model m {
  featur x: dense
  task y: regression(label = y)
}
