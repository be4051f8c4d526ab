//! Tests on ../shared/data. Each skips with a printed reason when it is absent.

use candle_core::Device;
use multigate::backend::candle::CandleModel;
use multigate::data::{self, csv_source::read_csv, Need};
use multigate::ir::DataSource;
use multigate::train::{self, metrics::TaskMetrics};

use super::{compile_path, repo, shared_data};

#[test]
fn census_paper_split_is_the_documented_one() {
    let Some(root) = shared_data("census split check") else { return };
    use std::io::BufRead;
    let read = |p: &str| -> Vec<String> {
        let f = std::fs::File::open(root.join("census-income-kdd").join(p)).unwrap();
        std::io::BufReader::new(flate2::read::MultiGzDecoder::new(f)).lines().map(|l| l.unwrap()).collect()
    };
    let test = read("census-income.test.gz");
    let (val, held) = (read("paper-split/validation.gz"), read("paper-split/test.gz"));
    assert_eq!((test.len(), val.len(), held.len()), (99_762, 49_881, 49_881));
    let mut order: Vec<usize> = (0..test.len()).collect();
    order.sort_by_key(|&i| multigate::rng::splitmix64(i as u64));
    let (mut v, mut t) = (order[..49_881].to_vec(), order[49_881..].to_vec());
    v.sort_unstable();
    t.sort_unstable();
    assert_eq!(&v[..5], &[3, 4, 5, 7, 10]);
    assert_eq!(&t[..5], &[0, 1, 2, 6, 8]);
    assert_eq!(val[0], test[v[0]]);
    assert_eq!(held[49_880], test[t[49_880]]);
}

#[test]
fn census_mmoe_reaches_the_papers_auc() {
    let Some(_) = shared_data("census MMoE training") else { return };
    let mut c = compile_path(&repo().join("models/census_income_mmoe.toml"));
    c.train.epochs = 2;
    let (splits, _) = data::load_splits(&c.model, &c.data, None, &|n: &Need| n.reader.clone()).unwrap();
    assert_eq!((splits.train.rows, splits.validation.rows), (199_523, 49_881));
    let model = CandleModel::new(&c.model, c.train.seed, &Device::Cpu).unwrap();
    let report = train::fit(&model, &c.train, &splits, &mut |_| {}).unwrap();
    let test = report.test.unwrap();
    let auc = |m: &TaskMetrics| match m {
        TaskMetrics::Binary(b) => b.auc.unwrap(),
        _ => panic!("binary"),
    };
    // Paper (MMoE, group 1): about 0.94 income, 0.993 never-married, after full training.
    assert!(auc(&test[0]) > 0.93, "income test AUC {}", auc(&test[0]));
    assert!(auc(&test[1]) > 0.99, "marital test AUC {}", auc(&test[1]));
}

#[test]
fn samples_parse_through_the_pipeline() {
    let Some(root) = shared_data("sample parsing") else { return };
    // The seed model's features read the Avazu sample.
    let c = compile_path(&repo().join("models/seed_avazu_mmoe.toml"));
    let fmt = multigate::ir::CsvFormat { delimiter: b',', header: true, columns: vec![], missing: None };
    let frame =
        read_csv(&root.join("samples/avazu_sample.txt"), &fmt, &data::needs(&c.model), true, &|_| String::new())
            .unwrap();
    let ds = data::encode(&c.model, &frame, true).unwrap();
    assert_eq!(ds.rows, 100);
    assert_eq!(ds.cat.len(), 11);
    // The census sample (first field: the original row index) reads with the census spec's columns.
    let census = compile_path(&repo().join("models/census_income_mmoe.toml"));
    let DataSource::Csv(csv) = &census.data.source else { panic!("csv") };
    let mut format = csv.format.clone();
    format.columns.insert(0, "row".into());
    let frame =
        read_csv(&root.join("samples/census-income.sample"), &format, &data::needs(&census.model), true, &|_| {
            String::new()
        })
        .unwrap();
    let ds = data::encode(&census.model, &frame, true).unwrap();
    assert_eq!(ds.rows, 200);
    assert!(ds.labels[1].contains(&1.0) && ds.labels[1].contains(&0.0));
}
