//! The binding layer: converts arguments, releases the GIL, maps errors. No logic here.

use std::sync::Arc;

use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::compare::{self as cmp, Comparison, Pair};
use crate::error::DriftError;
use crate::events as ev;
use crate::sketch::categorical as cat;
use crate::sketch::numeric as num;
use crate::sketch::quantile as qs;

create_exception!(
    _drift_core,
    DriftlineError,
    PyException,
    "Root of every driftline error."
);
create_exception!(
    _drift_core,
    DriftCoreError,
    DriftlineError,
    "An error raised by drift_core."
);
create_exception!(
    _drift_core,
    InvalidInputError,
    DriftCoreError,
    "Values or parameters drift_core cannot use (empty, all missing, wrong type, out of range)."
);
create_exception!(
    _drift_core,
    ReferenceMismatchError,
    DriftCoreError,
    "A sketch used with a reference (or merged with a sketch) it was not made for."
);
create_exception!(
    _drift_core,
    DecodeError,
    DriftCoreError,
    "Bytes that are not a valid profile or sketch of this format version."
);

impl From<DriftError> for PyErr {
    fn from(e: DriftError) -> PyErr {
        match e {
            DriftError::InvalidInput(m) => InvalidInputError::new_err(m),
            DriftError::Mismatch(m) => ReferenceMismatchError::new_err(m),
            DriftError::Decode(m) => DecodeError::new_err(m),
        }
    }
}

/// What `__reduce__` returns: a constructor and its arguments.
type Reduced<'py, Args> = PyResult<(Bound<'py, PyAny>, Args)>;

/// Below this many values the GIL round trip costs more than it frees.
const DETACH_MIN: usize = 1 << 14;

/// Runs `f` without the GIL when the work is large enough to matter.
fn detach_if<T: Send, F: FnOnce() -> T + Send>(py: Python<'_>, size: usize, f: F) -> T {
    if size >= DETACH_MIN {
        py.detach(f)
    } else {
        f()
    }
}

/// Views `values` as a 1-D float64 array: zero-copy for contiguous float64, else one
/// `np.ascontiguousarray(values, dtype=np.float64)` for numbers (bool, int, float,
/// object holding numbers or None).
fn as_f64_1d<'py>(values: &Bound<'py, PyAny>) -> PyResult<PyReadonlyArray1<'py, f64>> {
    if let Ok(a) = values.extract::<PyReadonlyArray1<'py, f64>>() {
        if a.is_contiguous() {
            return Ok(a);
        }
    }
    let py = values.py();
    let np = py.import("numpy")?;
    let arr = np.call_method1("asarray", (values,)).map_err(|e| {
        InvalidInputError::new_err(format!("values must be array-like numbers: {e}"))
    })?;
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    if !matches!(kind.as_str(), "b" | "i" | "u" | "f" | "O") {
        let dtype = arr.getattr("dtype")?.str()?.to_string();
        return Err(InvalidInputError::new_err(format!(
            "values must be numbers (NaN or None for missing), got an array of dtype {dtype}; \
             use a categorical reference for strings"
        )));
    }
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", np.getattr("float64")?)?;
    let conv = np
        .call_method("ascontiguousarray", (arr,), Some(&kwargs))
        .map_err(|e| {
            InvalidInputError::new_err(format!(
                "values must be numbers (NaN or None for missing): {e}"
            ))
        })?;
    let ndim: usize = conv.getattr("ndim")?.extract()?;
    if ndim != 1 {
        return Err(InvalidInputError::new_err(format!(
            "values must be a 1-D array, got {ndim} dimensions"
        )));
    }
    Ok(conv.extract::<PyReadonlyArray1<'py, f64>>()?)
}

/// Iterates a sequence of categories: str, None / NaN (missing), or anything else by str().
fn for_each_category<'py>(
    values: &Bound<'py, PyAny>,
    mut f: impl FnMut(Option<&str>),
) -> PyResult<()> {
    if values.is_instance_of::<PyString>() || values.is_instance_of::<PyBytes>() {
        return Err(InvalidInputError::new_err(
            "values must be a sequence of categories, not a single string",
        ));
    }
    let iter = values.try_iter().map_err(|_| {
        InvalidInputError::new_err(format!(
            "values must be an iterable of categories, got {}",
            values
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    for item in iter {
        let item = item?;
        if item.is_none() {
            f(None);
        } else if let Ok(s) = item.cast::<PyString>() {
            f(Some(s.to_str()?));
        } else if let Ok(x) = item.extract::<f64>() {
            if x.is_nan() {
                f(None);
            } else {
                f(Some(item.str()?.to_str()?));
            }
        } else {
            f(Some(item.str()?.to_str()?));
        }
    }
    Ok(())
}

fn hex(fp: u64) -> String {
    format!("{fp:016x}")
}

// ---------------------------------------------------------------------------- references

/// Profile of a numeric feature's reference distribution.
#[pyclass(module = "drift_core._drift_core", frozen)]
pub struct NumericReference {
    inner: Arc<num::NumericReference>,
}

#[pymethods]
impl NumericReference {
    #[staticmethod]
    #[pyo3(signature = (values, bins = 1024, psi_bins = 10))]
    fn build(values: &Bound<'_, PyAny>, bins: usize, psi_bins: usize) -> PyResult<Self> {
        let arr = as_f64_1d(values)?;
        let slice = arr.as_slice()?;
        let inner = detach_if(values.py(), slice.len(), || {
            num::NumericReference::build(slice, bins, psi_bins)
        })?;
        Ok(NumericReference {
            inner: Arc::new(inner),
        })
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        Ok(NumericReference {
            inner: Arc::new(num::NumericReference::from_bytes(data)?),
        })
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> Reduced<'py, (Bound<'py, PyBytes>,)> {
        let from = slf.get_type().getattr("from_bytes")?;
        Ok((from, (slf.get().to_bytes(slf.py()),)))
    }

    #[getter]
    fn kind(&self) -> &'static str {
        "numeric"
    }
    #[getter]
    fn bins(&self) -> u32 {
        self.inner.bins()
    }
    #[getter]
    fn psi_bins(&self) -> u32 {
        self.inner.psi_bins()
    }
    #[getter]
    fn edges<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_slice(py, self.inner.edges())
    }
    #[getter]
    fn counts<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, self.inner.counts())
    }
    /// Reference count per slot: inside bin j, at edge j, ..., above every edge.
    #[getter]
    fn slots<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, self.inner.slots())
    }
    #[getter]
    fn psi_edges<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_slice(py, self.inner.psi_edges())
    }
    #[getter]
    fn psi_counts<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, self.inner.psi_counts())
    }
    #[getter]
    fn n(&self) -> u64 {
        self.inner.n()
    }
    #[getter]
    fn missing(&self) -> u64 {
        self.inner.missing()
    }
    #[getter]
    fn ks_bound(&self) -> f64 {
        self.inner.ks_bound()
    }
    #[getter]
    fn min(&self) -> f64 {
        self.inner.moments().min
    }
    #[getter]
    fn max(&self) -> f64 {
        self.inner.moments().max
    }
    #[getter]
    fn mean(&self) -> f64 {
        self.inner.moments().mean_std(self.inner.n()).0
    }
    #[getter]
    fn std(&self) -> f64 {
        self.inner.moments().mean_std(self.inner.n()).1
    }
    #[getter]
    fn fingerprint(&self) -> String {
        hex(self.inner.fingerprint())
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<NumericReference>()
            .map(|o| o.get().inner.to_bytes() == self.inner.to_bytes())
            .unwrap_or(false)
    }
    fn __hash__(&self) -> u64 {
        self.inner.fingerprint()
    }
    fn __repr__(&self) -> String {
        format!(
            "NumericReference(n={}, missing={}, edges={}, psi_edges={}, fingerprint='{}')",
            self.inner.n(),
            self.inner.missing(),
            self.inner.edges().len(),
            self.inner.psi_edges().len(),
            hex(self.inner.fingerprint())
        )
    }
}

/// Profile of a categorical feature's reference distribution.
#[pyclass(module = "drift_core._drift_core", frozen)]
pub struct CategoricalReference {
    inner: Arc<cat::CategoricalReference>,
}

#[pymethods]
impl CategoricalReference {
    #[staticmethod]
    #[pyo3(signature = (values, max_categories = 100))]
    fn build(values: &Bound<'_, PyAny>, max_categories: usize) -> PyResult<Self> {
        let mut owned: Vec<Option<String>> = Vec::new();
        for_each_category(values, |v| owned.push(v.map(str::to_owned)))?;
        let inner =
            cat::CategoricalReference::build(owned.iter().map(|v| v.as_deref()), max_categories)?;
        Ok(CategoricalReference {
            inner: Arc::new(inner),
        })
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        Ok(CategoricalReference {
            inner: Arc::new(cat::CategoricalReference::from_bytes(data)?),
        })
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> Reduced<'py, (Bound<'py, PyBytes>,)> {
        let from = slf.get_type().getattr("from_bytes")?;
        Ok((from, (slf.get().to_bytes(slf.py()),)))
    }

    #[getter]
    fn kind(&self) -> &'static str {
        "categorical"
    }
    #[getter]
    fn categories(&self) -> Vec<String> {
        self.inner.categories().to_vec()
    }
    #[getter]
    fn counts<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, self.inner.counts())
    }
    #[getter]
    fn n(&self) -> u64 {
        self.inner.n()
    }
    #[getter]
    fn missing(&self) -> u64 {
        self.inner.missing()
    }
    #[getter]
    fn other_truncated(&self) -> bool {
        self.inner.other_truncated()
    }
    #[getter]
    fn fingerprint(&self) -> String {
        hex(self.inner.fingerprint())
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<CategoricalReference>()
            .map(|o| o.get().inner.to_bytes() == self.inner.to_bytes())
            .unwrap_or(false)
    }
    fn __hash__(&self) -> u64 {
        self.inner.fingerprint()
    }
    fn __repr__(&self) -> String {
        format!(
            "CategoricalReference(n={}, missing={}, categories={}, fingerprint='{}')",
            self.inner.n(),
            self.inner.missing(),
            self.inner.categories().len(),
            hex(self.inner.fingerprint())
        )
    }
}

// ---------------------------------------------------------------------------- sketches

/// One window's numeric values counted in the bins of one reference.
#[pyclass(module = "drift_core._drift_core")]
pub struct NumericSketch {
    inner: num::NumericSketch,
    reference: Arc<num::NumericReference>,
}

#[pymethods]
impl NumericSketch {
    #[new]
    fn new(reference: &Bound<'_, NumericReference>) -> Self {
        let r = reference.get().inner.clone();
        NumericSketch {
            inner: num::NumericSketch::new(&r),
            reference: r,
        }
    }

    fn update(&mut self, py: Python<'_>, values: &Bound<'_, PyAny>) -> PyResult<()> {
        let arr = as_f64_1d(values)?;
        let slice = arr.as_slice()?;
        let (inner, reference) = (&mut self.inner, &self.reference);
        detach_if(py, slice.len(), || inner.update(reference, slice))?;
        Ok(())
    }

    fn merge(&mut self, other: PyRef<'_, NumericSketch>) -> PyResult<()> {
        Ok(self.inner.merge(&other.inner)?)
    }

    fn copy(&self) -> Self {
        NumericSketch {
            inner: self.inner.clone(),
            reference: self.reference.clone(),
        }
    }

    #[getter]
    fn reference(&self) -> NumericReference {
        NumericReference {
            inner: self.reference.clone(),
        }
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    #[staticmethod]
    fn from_bytes(data: &[u8], reference: &Bound<'_, NumericReference>) -> PyResult<Self> {
        let r = reference.get().inner.clone();
        Ok(NumericSketch {
            inner: num::NumericSketch::from_bytes(data, &r)?,
            reference: r,
        })
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> Reduced<'py, (Bound<'py, PyBytes>, NumericReference)> {
        let from = slf.get_type().getattr("from_bytes")?;
        let me = slf.borrow();
        Ok((from, (me.to_bytes(slf.py()), me.reference())))
    }

    #[getter]
    fn kind(&self) -> &'static str {
        "numeric"
    }
    /// Count per bin (e[j-1], e[j]].
    #[getter]
    fn counts<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_vec(py, self.inner.counts())
    }
    /// Count per slot: inside bin j, at edge j, ..., above every edge.
    #[getter]
    fn slots<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_vec(py, self.inner.slots())
    }
    #[getter]
    fn n(&self) -> u64 {
        self.inner.n()
    }
    #[getter]
    fn missing(&self) -> u64 {
        self.inner.missing()
    }
    #[getter]
    fn min(&self) -> f64 {
        self.inner.moments().min
    }
    #[getter]
    fn max(&self) -> f64 {
        self.inner.moments().max
    }
    #[getter]
    fn sum(&self) -> f64 {
        self.inner.moments().sum
    }
    #[getter]
    fn sum_sq(&self) -> f64 {
        self.inner.moments().sum_sq
    }
    #[getter]
    fn infinite(&self) -> u64 {
        self.inner.moments().infinite
    }
    #[getter]
    fn mean(&self) -> f64 {
        self.inner.moments().mean_std(self.inner.n()).0
    }
    #[getter]
    fn std(&self) -> f64 {
        self.inner.moments().mean_std(self.inner.n()).1
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<NumericSketch>()
            .map(|o| o.borrow().inner == self.inner)
            .unwrap_or(false)
    }
    fn __repr__(&self) -> String {
        format!(
            "NumericSketch(n={}, missing={}, reference='{}')",
            self.inner.n(),
            self.inner.missing(),
            hex(self.inner.fingerprint())
        )
    }
}

/// One window's categories counted in the buckets of one reference.
#[pyclass(module = "drift_core._drift_core")]
pub struct CategoricalSketch {
    inner: cat::CategoricalSketch,
    reference: Arc<cat::CategoricalReference>,
}

#[pymethods]
impl CategoricalSketch {
    #[new]
    fn new(reference: &Bound<'_, CategoricalReference>) -> Self {
        let r = reference.get().inner.clone();
        CategoricalSketch {
            inner: cat::CategoricalSketch::new(&r),
            reference: r,
        }
    }

    fn update(&mut self, values: &Bound<'_, PyAny>) -> PyResult<()> {
        // decode into a scratch sketch first: a bad item mid-way leaves `self` untouched
        let mut scratch = cat::CategoricalSketch::new(&self.reference);
        let reference = &self.reference;
        for_each_category(values, |v| scratch.add(reference, v, 1))?;
        Ok(self.inner.merge(&scratch)?)
    }

    fn merge(&mut self, other: PyRef<'_, CategoricalSketch>) -> PyResult<()> {
        Ok(self.inner.merge(&other.inner)?)
    }

    fn copy(&self) -> Self {
        CategoricalSketch {
            inner: self.inner.clone(),
            reference: self.reference.clone(),
        }
    }

    #[getter]
    fn reference(&self) -> CategoricalReference {
        CategoricalReference {
            inner: self.reference.clone(),
        }
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    #[staticmethod]
    fn from_bytes(data: &[u8], reference: &Bound<'_, CategoricalReference>) -> PyResult<Self> {
        let r = reference.get().inner.clone();
        Ok(CategoricalSketch {
            inner: cat::CategoricalSketch::from_bytes(data, &r)?,
            reference: r,
        })
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> Reduced<'py, (Bound<'py, PyBytes>, CategoricalReference)> {
        let from = slf.get_type().getattr("from_bytes")?;
        let me = slf.borrow();
        Ok((from, (me.to_bytes(slf.py()), me.reference())))
    }

    #[getter]
    fn kind(&self) -> &'static str {
        "categorical"
    }
    /// Counts per tracked category, then other-known, then unseen.
    #[getter]
    fn counts<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, self.inner.counts())
    }
    #[getter]
    fn n(&self) -> u64 {
        self.inner.n()
    }
    #[getter]
    fn missing(&self) -> u64 {
        self.inner.missing()
    }
    #[getter]
    fn unseen(&self) -> u64 {
        self.inner.unseen()
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<CategoricalSketch>()
            .map(|o| o.borrow().inner == self.inner)
            .unwrap_or(false)
    }
    fn __repr__(&self) -> String {
        format!(
            "CategoricalSketch(n={}, missing={}, unseen={}, reference='{}')",
            self.inner.n(),
            self.inner.missing(),
            self.inner.unseen(),
            hex(self.inner.fingerprint())
        )
    }
}

/// DDSketch: quantiles within a relative error, without a reference.
#[pyclass(module = "drift_core._drift_core")]
pub struct QuantileSketch {
    inner: qs::QuantileSketch,
}

#[pymethods]
impl QuantileSketch {
    #[new]
    #[pyo3(signature = (relative_accuracy = 0.01, max_bins = 2048))]
    fn new(relative_accuracy: f64, max_bins: u32) -> PyResult<Self> {
        Ok(QuantileSketch {
            inner: qs::QuantileSketch::new(relative_accuracy, max_bins)?,
        })
    }

    fn update(&mut self, py: Python<'_>, values: &Bound<'_, PyAny>) -> PyResult<()> {
        let arr = as_f64_1d(values)?;
        let slice = arr.as_slice()?;
        let inner = &mut self.inner;
        detach_if(py, slice.len(), || inner.update(slice));
        Ok(())
    }

    fn merge(&mut self, other: PyRef<'_, QuantileSketch>) -> PyResult<()> {
        Ok(self.inner.merge(&other.inner)?)
    }

    fn copy(&self) -> Self {
        QuantileSketch {
            inner: self.inner.clone(),
        }
    }

    fn quantile(&self, q: f64) -> PyResult<f64> {
        Ok(self.inner.quantile(q)?)
    }

    fn quantiles(&self, qs: Vec<f64>) -> PyResult<Vec<f64>> {
        qs.into_iter()
            .map(|q| self.inner.quantile(q).map_err(PyErr::from))
            .collect()
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        Ok(QuantileSketch {
            inner: qs::QuantileSketch::from_bytes(data)?,
        })
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> Reduced<'py, (Bound<'py, PyBytes>,)> {
        let from = slf.get_type().getattr("from_bytes")?;
        Ok((from, (slf.borrow().to_bytes(slf.py()),)))
    }

    #[getter]
    fn relative_accuracy(&self) -> f64 {
        self.inner.alpha()
    }
    #[getter]
    fn max_bins(&self) -> u32 {
        self.inner.max_bins()
    }
    #[getter]
    fn count(&self) -> u64 {
        self.inner.count()
    }
    #[getter]
    fn missing(&self) -> u64 {
        self.inner.missing()
    }
    #[getter]
    fn infinite(&self) -> u64 {
        self.inner.infinite()
    }
    #[getter]
    fn sum(&self) -> f64 {
        self.inner.sum()
    }
    #[getter]
    fn min(&self) -> f64 {
        self.inner.min()
    }
    #[getter]
    fn max(&self) -> f64 {
        self.inner.max()
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<QuantileSketch>()
            .map(|o| o.borrow().inner == self.inner)
            .unwrap_or(false)
    }
    fn __repr__(&self) -> String {
        format!(
            "QuantileSketch(count={}, relative_accuracy={}, max_bins={})",
            self.inner.count(),
            self.inner.alpha(),
            self.inner.max_bins()
        )
    }
}

// ---------------------------------------------------------------------------- compare

/// Borrowed sides of one comparison; the guards keep the sketches borrowed.
enum Borrowed<'py> {
    Numeric(Bound<'py, NumericReference>, PyRef<'py, NumericSketch>),
    Categorical(
        Bound<'py, CategoricalReference>,
        PyRef<'py, CategoricalSketch>,
    ),
}

impl Borrowed<'_> {
    fn pair(&self) -> Pair<'_> {
        match self {
            Borrowed::Numeric(r, s) => Pair::Numeric(&r.get().inner, &s.inner),
            Borrowed::Categorical(r, s) => Pair::Categorical(&r.get().inner, &s.inner),
        }
    }
}

fn borrow_pair<'py>(
    reference: &Bound<'py, PyAny>,
    sketch: &Bound<'py, PyAny>,
) -> PyResult<Borrowed<'py>> {
    if let (Ok(r), Ok(s)) = (
        reference.cast::<NumericReference>(),
        sketch.cast::<NumericSketch>(),
    ) {
        return Ok(Borrowed::Numeric(r.clone(), s.try_borrow()?));
    }
    if let (Ok(r), Ok(s)) = (
        reference.cast::<CategoricalReference>(),
        sketch.cast::<CategoricalSketch>(),
    ) {
        return Ok(Borrowed::Categorical(r.clone(), s.try_borrow()?));
    }
    Err(InvalidInputError::new_err(format!(
        "compare takes a (NumericReference, NumericSketch) or a \
         (CategoricalReference, CategoricalSketch) pair, got ({}, {})",
        reference.get_type().name()?,
        sketch.get_type().name()?
    )))
}

fn figures_dict<'py>(py: Python<'py>, f: &Comparison) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match f {
        Comparison::Numeric(c) => {
            d.set_item(intern!(py, "kind"), "numeric")?;
            d.set_item(intern!(py, "n"), c.n)?;
            d.set_item(intern!(py, "missing"), c.missing)?;
            d.set_item(intern!(py, "missing_share"), c.missing_share)?;
            d.set_item(
                intern!(py, "reference_missing_share"),
                c.reference_missing_share,
            )?;
            d.set_item(intern!(py, "missing_pvalue"), c.missing_pvalue)?;
            d.set_item(intern!(py, "ks"), c.ks)?;
            d.set_item(intern!(py, "ks_pvalue"), c.ks_pvalue)?;
            d.set_item(intern!(py, "ks_bound"), c.ks_bound)?;
            d.set_item(intern!(py, "psi"), c.psi)?;
            d.set_item(intern!(py, "wasserstein"), c.wasserstein)?;
            d.set_item(intern!(py, "wasserstein_norm"), c.wasserstein_norm)?;
            d.set_item(intern!(py, "mean"), c.mean)?;
            d.set_item(intern!(py, "std"), c.std)?;
            d.set_item(intern!(py, "min"), c.min)?;
            d.set_item(intern!(py, "max"), c.max)?;
            d.set_item(intern!(py, "reference_mean"), c.reference_mean)?;
            d.set_item(intern!(py, "reference_std"), c.reference_std)?;
        }
        Comparison::Categorical(c) => {
            d.set_item(intern!(py, "kind"), "categorical")?;
            d.set_item(intern!(py, "n"), c.n)?;
            d.set_item(intern!(py, "missing"), c.missing)?;
            d.set_item(intern!(py, "missing_share"), c.missing_share)?;
            d.set_item(
                intern!(py, "reference_missing_share"),
                c.reference_missing_share,
            )?;
            d.set_item(intern!(py, "missing_pvalue"), c.missing_pvalue)?;
            d.set_item(intern!(py, "chi2"), c.chi2)?;
            d.set_item(intern!(py, "chi2_dof"), c.chi2_dof)?;
            d.set_item(intern!(py, "chi2_pvalue"), c.chi2_pvalue)?;
            d.set_item(intern!(py, "js"), c.js)?;
            d.set_item(intern!(py, "psi"), c.psi)?;
            d.set_item(intern!(py, "unseen_share"), c.unseen_share)?;
        }
    }
    Ok(d)
}

/// Compares one window sketch with its reference.
#[pyfunction]
fn compare<'py>(
    reference: &Bound<'py, PyAny>,
    sketch: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let borrowed = borrow_pair(reference, sketch)?;
    figures_dict(reference.py(), &borrowed.pair().compare()?)
}

/// Compares many (reference, sketch) pairs in one call, without the GIL.
#[pyfunction]
fn compare_many<'py>(
    py: Python<'py>,
    pairs: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let borrowed: Vec<Borrowed<'py>> = pairs
        .iter()
        .map(|(r, s)| borrow_pair(r, s))
        .collect::<PyResult<_>>()?;
    let views: Vec<Pair<'_>> = borrowed.iter().map(Borrowed::pair).collect();
    let out = detach_if(py, views.len() * 1024, || cmp::compare_many(&views));
    out.into_iter().map(|f| figures_dict(py, &f?)).collect()
}

/// Updates many numeric sketches from the columns of one 2-D array (rows x features).
#[pyfunction]
fn update_many(
    py: Python<'_>,
    sketches: Vec<Bound<'_, NumericSketch>>,
    matrix: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let np = py.import("numpy")?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", np.getattr("float64")?)?;
    let obj = np
        .call_method("asarray", (matrix,), Some(&kwargs))
        .map_err(|e| InvalidInputError::new_err(format!("matrix must hold numbers: {e}")))?;
    let not_2d =
        || InvalidInputError::new_err("matrix must be a 2-D array of shape (rows, features)");
    let mut arr: PyReadonlyArray2<'_, f64> = obj.extract().map_err(|_| not_2d())?;
    if !arr.is_c_contiguous() && !arr.is_fortran_contiguous() {
        // a strided view: one copy in row-major order
        let copy = np.call_method1("ascontiguousarray", (&obj,))?;
        arr = copy.extract().map_err(|_| not_2d())?;
    }
    let view = arr.as_array();
    if view.ncols() != sketches.len() {
        return Err(InvalidInputError::new_err(format!(
            "matrix has {} columns but {} sketches were given",
            view.ncols(),
            sketches.len()
        )));
    }
    let mut guards: Vec<PyRefMut<'_, NumericSketch>> = Vec::with_capacity(sketches.len());
    for s in &sketches {
        guards.push(s.try_borrow_mut().map_err(|_| {
            InvalidInputError::new_err("the same sketch appears twice in update_many")
        })?);
    }
    let mut targets: Vec<(&mut num::NumericSketch, &num::NumericReference)> = guards
        .iter_mut()
        .map(|g| {
            let g = &mut **g;
            (&mut g.inner, &*g.reference)
        })
        .collect();
    let rows = view.nrows();
    detach_if(py, view.len(), || {
        if rows == 0 {
            return Ok(());
        }
        if let Some(row_major) = view.as_slice() {
            return num::update_many_rows(&mut targets, row_major);
        }
        if let Some(column_major) = view.t().to_slice() {
            let columns: Vec<&[f64]> = column_major.chunks_exact(rows).collect();
            return num::update_many(&mut targets, &columns);
        }
        // the copy above leaves no other layout; should one slip through, copy again
        let row_major: Vec<f64> = view.iter().copied().collect();
        num::update_many_rows(&mut targets, &row_major)
    })?;
    Ok(())
}

/// P(D_n >= x) of the one-sample two-sided Kolmogorov distribution.
#[pyfunction]
fn kolmogorov_sf(n: u64, x: f64) -> f64 {
    cmp::ks::kolmogorov_sf(n, x)
}

/// Asymptotic two-sample KS p-value, as SciPy's `ks_2samp(method="asymp")`.
#[pyfunction]
fn ks_pvalue(statistic: f64, n1: u64, n2: u64) -> f64 {
    cmp::ks::ks_2samp_pvalue(statistic, n1, n2)
}

/// PSI between reference counts and window counts over the same bins.
#[pyfunction]
fn psi(expected: Vec<u64>, actual: Vec<u64>) -> PyResult<f64> {
    same_len(&expected, &actual)?;
    Ok(cmp::psi(&expected, &actual))
}

/// Jensen–Shannon distance (base 2) between two count vectors.
#[pyfunction]
fn js_distance(p: Vec<u64>, q: Vec<u64>) -> PyResult<f64> {
    same_len(&p, &q)?;
    Ok(cmp::js_distance(&p, &q))
}

/// Chi-square homogeneity test on two count vectors: (statistic, dof, p-value).
#[pyfunction]
fn chi2_homogeneity(a: Vec<u64>, b: Vec<u64>) -> PyResult<(f64, u64, f64)> {
    same_len(&a, &b)?;
    Ok(cmp::chi2_homogeneity(&a, &b))
}

/// Two-sided pooled two-proportion z-test p-value.
#[pyfunction]
fn two_proportion_pvalue(k1: u64, n1: u64, k2: u64, n2: u64) -> PyResult<f64> {
    if k1 > n1 || k2 > n2 {
        return Err(InvalidInputError::new_err("successes exceed trials"));
    }
    Ok(cmp::two_proportion_pvalue(k1, n1, k2, n2))
}

fn same_len(a: &[u64], b: &[u64]) -> PyResult<()> {
    if a.len() != b.len() || a.is_empty() {
        return Err(InvalidInputError::new_err(format!(
            "count vectors must be non-empty and of equal length, got {} and {}",
            a.len(),
            b.len()
        )));
    }
    Ok(())
}

// ------------------------------------------------------------------ event decoding

/// (message index, start, end) of a message (-1, -1) or an event the caller decodes.
type Rejected = (u32, i64, i64);

/// Decodes JSON prediction events (single events and batch envelopes) into columns per
/// (model, version); what it is not sure of is left to the caller (see `events.rs`).
#[pyclass(module = "drift_core._drift_core", frozen)]
struct EventDecoder {
    contract: ev::Contract,
}

#[pymethods]
impl EventDecoder {
    #[new]
    #[pyo3(signature = (event_schema, batch_schema, *, max_message_bytes, max_events, max_features, max_string_chars, min_ts_ms, max_future_ms=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        event_schema: String,
        batch_schema: String,
        max_message_bytes: usize,
        max_events: usize,
        max_features: usize,
        max_string_chars: usize,
        min_ts_ms: i64,
        max_future_ms: Option<i64>,
    ) -> Self {
        EventDecoder {
            contract: ev::Contract {
                event_schema,
                batch_schema,
                max_message_bytes,
                max_events,
                max_features,
                max_string_chars,
                min_ts_ms,
                max_future_ms,
            },
        }
    }

    /// (groups, rejected): the accepted events as columns per (model, version) in order
    /// of first appearance, and (message index, start, end) of what the caller must
    /// decode itself (start = end = -1: the whole message).
    #[pyo3(signature = (messages, now_ms=None))]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        messages: Vec<Bound<'py, PyBytes>>,
        now_ms: Option<i64>,
    ) -> PyResult<(Vec<EventGroup>, Vec<Rejected>)> {
        let decoded = ev::decode_messages(
            messages.iter().map(|m| m.as_bytes()),
            &self.contract,
            now_ms,
        );
        let rejected = decoded
            .rejected
            .iter()
            .map(|&(m, span)| match span {
                Some((a, b)) => (m, i64::from(a), i64::from(b)),
                None => (m, -1, -1),
            })
            .collect();
        let groups = decoded
            .groups
            .into_iter()
            .filter(|g| g.rows > 0)
            .map(|g| EventGroup::build(py, g))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((groups, rejected))
    }

    /// (start, end) of each event of a message: its envelope's items, or the whole
    /// message for a single event; empty for anything else.
    fn spans(&self, message: &[u8]) -> Vec<(u32, u32)> {
        ev::event_spans(message, &self.contract)
    }
}

/// The events of one (model, version) from one `EventDecoder.decode` call, in arrival
/// order. A column is (numbers, strings, n_numbers, n_strings, n_present, absent):
/// float64 with NaN where a row has no number, the strings (None where a row has none)
/// or None if the column holds no string, and the rows without the key.
#[pyclass(module = "drift_core._drift_core", frozen)]
struct EventGroup {
    #[pyo3(get)]
    model: String,
    #[pyo3(get)]
    version: String,
    #[pyo3(get)]
    rows: usize,
    #[pyo3(get)]
    message: Py<PyAny>,
    #[pyo3(get)]
    seq: Py<PyAny>,
    #[pyo3(get)]
    item: Py<PyAny>,
    #[pyo3(get)]
    ts: Py<PyAny>,
    #[pyo3(get)]
    ts_text: Vec<(u32, String)>,
    #[pyo3(get)]
    event_id: Py<PyAny>,
    #[pyo3(get)]
    latency: Py<PyAny>,
    #[pyo3(get)]
    error: Py<PyAny>,
    #[pyo3(get)]
    prediction: Py<PyAny>,
    #[pyo3(get)]
    features: Py<PyAny>,
}

fn column_tuple(py: Python<'_>, c: ev::Column) -> PyResult<Py<PyAny>> {
    let numbers = PyArray1::from_vec(py, c.numbers);
    let strings: Py<PyAny> = match c.strings {
        Some(s) => s.into_pyobject(py)?.into_any().unbind(),
        None => py.None(),
    };
    let absent = PyArray1::from_vec(py, c.absent);
    Ok((
        numbers,
        strings,
        c.n_numbers,
        c.n_strings,
        c.n_present,
        absent,
    )
        .into_pyobject(py)?
        .into_any()
        .unbind())
}

impl EventGroup {
    fn build(py: Python<'_>, g: ev::Group) -> PyResult<Self> {
        let features = PyDict::new(py);
        for column in g.features {
            let name = PyString::new(py, &column.name);
            features.set_item(name, column_tuple(py, column)?)?;
        }
        Ok(EventGroup {
            model: g.model,
            version: g.version,
            rows: g.rows,
            message: PyArray1::from_vec(py, g.message).into_any().unbind(),
            seq: PyArray1::from_vec(py, g.seq).into_any().unbind(),
            item: PyArray1::from_vec(py, g.item).into_any().unbind(),
            ts: PyArray1::from_vec(py, g.ts).into_any().unbind(),
            ts_text: g.ts_text,
            event_id: g.event_id.into_pyobject(py)?.into_any().unbind(),
            latency: PyArray1::from_vec(py, g.latency).into_any().unbind(),
            error: PyArray1::from_vec(py, g.error).into_any().unbind(),
            prediction: column_tuple(py, g.prediction)?,
            features: features.into_any().unbind(),
        })
    }
}

#[pymethods]
impl EventGroup {
    fn __repr__(&self) -> String {
        format!(
            "EventGroup(model={:?}, version={:?}, rows={})",
            self.model, self.version, self.rows
        )
    }
}

// The Python signatures spell the defaults out (so they show in help() and the stubs);
// they must stay equal to the core's.
const _: () = assert!(num::DEFAULT_BINS == 1024 && num::DEFAULT_PSI_BINS == 10);
const _: () = assert!(cat::DEFAULT_MAX_CATEGORIES == 100 && qs::DEFAULT_MAX_BINS == 2048);

#[pymodule]
fn _drift_core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("DriftlineError", py.get_type::<DriftlineError>())?;
    m.add("DriftCoreError", py.get_type::<DriftCoreError>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add(
        "ReferenceMismatchError",
        py.get_type::<ReferenceMismatchError>(),
    )?;
    m.add("DecodeError", py.get_type::<DecodeError>())?;
    m.add_class::<NumericReference>()?;
    m.add_class::<CategoricalReference>()?;
    m.add_class::<NumericSketch>()?;
    m.add_class::<CategoricalSketch>()?;
    m.add_class::<QuantileSketch>()?;
    m.add_class::<EventDecoder>()?;
    m.add_class::<EventGroup>()?;
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    m.add_function(wrap_pyfunction!(compare_many, m)?)?;
    m.add_function(wrap_pyfunction!(update_many, m)?)?;
    m.add_function(wrap_pyfunction!(kolmogorov_sf, m)?)?;
    m.add_function(wrap_pyfunction!(ks_pvalue, m)?)?;
    m.add_function(wrap_pyfunction!(psi, m)?)?;
    m.add_function(wrap_pyfunction!(js_distance, m)?)?;
    m.add_function(wrap_pyfunction!(chi2_homogeneity, m)?)?;
    m.add_function(wrap_pyfunction!(two_proportion_pvalue, m)?)?;
    m.add("FORMAT_VERSION", crate::codec::FORMAT_VERSION)?;
    m.add("PSI_EPSILON", cmp::PSI_EPSILON)?;
    Ok(())
}
